"""The command line of `backend/_wsgi.py` (`label-studio-ml start backend --port 8003 [--with key=value ...]`).

    python backend/_wsgi.py --port 8003 --with model_score_threshold=0.3 device=cpu
    gunicorn 'backend._wsgi:app' -c backend/gunicorn.conf.py      # production (settings from env)

The arguments are label-studio-ml's: --host, --port, --with/--kwargs, --log-level, --debug,
--basic-auth-user, --basic-auth-pass, --check (load the configured models, report, exit).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from backend.settings import Settings, SettingsError
from backend.serving.wrapper_watch import watch_wrapper

logger = logging.getLogger("backend")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stdout,
                        format="[%(asctime)s] [%(levelname)s] [%(name)s::%(funcName)s::%(lineno)d] %(message)s")
    logging.getLogger().setLevel(level.upper())


def parse_with(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingsError(f"--with expects key=value, got '{pair}'")
        overrides[key] = value
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Label Studio ML backend for YOLO and Segment Anything")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", 9090)), help="server port (default 9090)")
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="server host (default 0.0.0.0)")
    parser.add_argument("--kwargs", "--with", dest="kwargs", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="settings, e.g. --with model_score_threshold=0.3 device=cpu (see README)")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    parser.add_argument("--model-dir", default=None, help="same as MODEL_ROOT")
    parser.add_argument("--basic-auth-user", default=None)
    parser.add_argument("--basic-auth-pass", default=None)
    parser.add_argument("--check", action="store_true", help="load the configured models, report and exit")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, str] = parse_with(args.kwargs)
    if args.model_dir:
        overrides.setdefault("model_root", args.model_dir)
    if args.basic_auth_user is not None:
        overrides["basic_auth_user"] = args.basic_auth_user
    if args.basic_auth_pass is not None:
        overrides["basic_auth_pass"] = args.basic_auth_pass
    if args.debug:
        overrides["log_level"] = "DEBUG"
    elif args.log_level:
        overrides["log_level"] = args.log_level
    return Settings.load(overrides)


def check_models(settings: Settings) -> int:
    """Load every model the settings name; print one line each; 0 when all load."""
    from backend.serving.app import build_services
    from backend.models.cache import ModelPathError
    from backend.training.model_choice import ModelChoice

    try:
        services = build_services(settings)
    except (ModelPathError, SettingsError, OSError) as exc:
        print(f"FAILED: {exc}")
        return 1
    except RuntimeError as exc:
        print(f"FAILED: {_torchvision_mismatch_or_raise(exc)}")
        return 1
    ok = True
    for setting, value in (("YOLO_DET_MODEL", settings.yolo_det_model), ("YOLO_SEG_MODEL", settings.yolo_seg_model)):
        try:
            model = services.yolo.get(ModelChoice(value, setting))
            served = "" if model.path.name == Path(value).name else f" -> {model.path.name}"  # a demo stand-in
            print(f"ok: {setting}={value}{served} ({model.task}, {len(model.class_names)} classes, "
                  f"device {services.device})")
        except ModelPathError as exc:
            ok = False
            print(f"FAILED: {exc}")
    if services.interactive is not None:
        print(f"ok: {services.interactive.describe()}")
    return 0 if ok else 1


def _torchvision_mismatch_or_raise(exc: RuntimeError) -> str:
    from backend.models.torch_versions import torchvision_mismatch

    if (problem := torchvision_mismatch(exc)) is None:
        raise exc
    return problem


def run_server(app, settings: Settings, sock: socket.socket, description: str) -> int:  # noqa: ANN001 - ASGI app
    """uvicorn on the socket bound beforehand; "serving on" is logged once it accepts requests."""
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                logger.info("serving on %s", description)

    server = AnnouncingServer(uvicorn.Config(app, log_level=settings.log_level.lower(), timeout_keep_alive=75,
                                            proxy_headers=False))  # the caller is the socket peer (access.py)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; raises OSError with a message saying what to do."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise OSError(f"--host {host} cannot be used: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts need no TIME_WAIT pause
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} on {host} is already in use (another backend still running?): "
                          f"stop it or choose another --port") from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from backend.serving.app import build_services, create_app
    from backend.models.cache import ModelPathError

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with sock:
        try:
            services = build_services(settings)
        except (ModelPathError, SettingsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"error: {_torchvision_mismatch_or_raise(exc)}", file=sys.stderr)
            return 1
        description = (f"http://{args.host}:{args.port} (device {services.device}, "
                       f"models from {settings.model_root_path})")
        return run_server(create_app(settings, services), settings, sock, description)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.basic_auth_pass is not None:
        logger.warning("--basic-auth-pass puts the password on the command line, where every user of this machine "
                       "can read it (ps); set BASIC_AUTH_PASS or BASIC_AUTH_PASS_FILE instead")
    wrapper = watch_wrapper()
    status = check_models(settings) if args.check else serve(args, settings)
    if status and wrapper is not None:
        print(f"exit status {status}, which label-studio-ml does not pass on (it exits 0); "
              f"`python backend/_wsgi.py {' '.join(argv if argv is not None else sys.argv[1:])}` does",
              file=sys.stderr)
    return status
