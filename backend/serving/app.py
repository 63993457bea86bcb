"""The HTTP protocol layer: Label Studio's ML backend endpoints on FastAPI.

Request bodies are read and validated here (malformed input is a 4xx with a JSON message, never a
stack trace); the work itself runs in a thread pool through `Services`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backend import __version__
from formats.label_config import LabelConfig, LabelConfigError, parse_label_config
from backend.sources.label_studio import Credentials, SetupConflict
from backend.models.cache import ModelPathError, resolve_model_path
from backend.models.yolo_files import is_downloadable_asset, model_exists, not_a_model
from backend.prediction.limits import RequestLimits
from backend.prediction.predictor import PredictionConfigError
from backend.training.model_choice import model_choice
from formats.regions import prediction
from backend.serving.access import AccessPolicy
from backend.serving.services import Services, build_services
from backend.serving.status_page import add_status_routes, html_page, wants_html
from backend.settings import Settings
from backend.interactive.video_prompts import has_video_prompts

logger = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- request parsing


async def read_json(request: Request, max_bytes: int) -> dict:
    """The body as a JSON object; its `project` is kept on the request for the log of a 4xx."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(f"request body is larger than MAX_REQUEST_BYTES={max_bytes}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise BadRequest(f"request body is larger than MAX_REQUEST_BYTES={max_bytes}", 413)
    if not body:
        raise BadRequest("request body is empty; a JSON object is expected")
    try:
        payload = json.loads(bytes(body), parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except ValueError as exc:  # also integers beyond Python's 4300-digit conversion limit
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:300]}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(payload).__name__}")
    if _depth(payload) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    request.state.project = _project_for_log(payload.get("project"))
    return payload


def _project_for_log(project: Any) -> str | None:
    if isinstance(project, dict):  # webhooks send the serialized project
        project = project.get("id")
    return str(project)[:40] if isinstance(project, (str, int)) and not isinstance(project, bool) else None


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"request body contains {name}, which is not valid JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _label_config(payload: dict, key: str, saved: dict) -> LabelConfig:
    xml = payload.get(key) or saved.get("label_config")
    if xml is None:
        raise BadRequest(f"'{key}' (the labeling config) is missing and no /setup provided one")
    if not isinstance(xml, str):
        raise BadRequest(f"'{key}' must be a string with the labeling config XML")
    try:
        return parse_label_config(xml)
    except LabelConfigError as exc:
        raise BadRequest(str(exc)) from None


def _optional_str(payload: dict, key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"'{key}' must be a string")


# ---------------------------------------------------------------- the app


LOADER_JOIN_SECONDS = 30


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Model calls run in anyio's worker threads (run_in_threadpool); THREADS caps them per process.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        # Built on a first request instead, loading SAM would block this worker's event loop, and with it
        # every other request (Label Studio's health check too), for as long as a large checkpoint takes.
        services = await anyio.to_thread.run_sync(get_services)
        services.start_loading_default_models()
        logger.log(logging.WARNING if access.mode == "open" else logging.INFO, "%s", access.describe())
        yield
        await anyio.to_thread.run_sync(services.background.join, LOADER_JOIN_SECONDS)  # see BackgroundLoads

    app = FastAPI(title="Label Studio ML backend: YOLO + SAM", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    state: dict[str, Services] = {}
    if services is not None:
        state["services"] = services
    services_lock = threading.Lock()
    health_threads = anyio.CapacityLimiter(2)

    def get_services() -> Services:
        if "services" not in state:
            with services_lock:
                if "services" not in state:
                    state["services"] = build_services(settings)
        return state["services"]

    app.state.get_services = get_services
    access = app.state.access = AccessPolicy.from_settings(settings)

    @app.middleware("http")
    async def protocol_guard(request: Request, call_next):  # noqa: ANN001, ANN202 - Starlette's signature
        endpoint = request.url.path if request.url.path in KNOWN_PATHS else "other"
        started = time.perf_counter()
        refusal = access.refusal(request)
        if refusal is not None:  # /health too: Docker's HEALTHCHECK asks from inside the container (loopback)
            access.log_refusal(refusal, request.method, request.url.path[:200])
            headers = {"WWW-Authenticate": 'Basic realm="ml-backend"'} if refusal.status == 401 else None
            response: Response = JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=headers)
        else:
            try:
                response = await call_next(request)
            except BadRequest as exc:
                response = _refusal(request, exc)
            except Exception:  # never a stack trace to the client
                logger.exception("unhandled error on %s %s", request.method, request.url.path)
                response = JSONResponse({"error": "internal error; see the backend log"}, status_code=500)
        if response.status_code == 405 or (response.status_code == 404 and "endpoint" not in request.scope):
            _log_unknown_route(request, response.status_code)
        services = state.get("services")
        if services is not None:
            metrics = services.metrics
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            if response.status_code >= 400:
                metrics.errors.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return _refusal(request, exc)

    @app.get("/")
    @app.get("/health")
    async def health(request: Request) -> Any:
        services = get_services()
        if request.url.path == "/" and wants_html(request):  # a browser: the status page (backend/serving/status_page.py)
            return await run_in_threadpool(html_page, services, request)
        return {
            "status": "UP",
            "model_class": "YoloSamBackend",
            "model_version": services.model_version(),
            "device": services.device,
            "models_loaded": sorted(str(key[1]) for key in services.models.loaded()),
            "models_failed": dict(services.model_errors),
            "sam": services.settings.model_name or None,
            "uptime_seconds": round(time.time() - services.started_at, 1),
            "label_studio_token_refused": services.token_check.problems() if services.token_check else {},
            # its own thread limit: /predict requests waiting on stalled downloads hold all of THREADS
            "training": await anyio.to_thread.run_sync(services.training.status, limiter=health_threads),
        }

    add_status_routes(app, get_services)

    @app.post("/setup")
    async def setup(request: Request) -> dict:
        payload = await read_json(request, settings.max_request_bytes)
        services = get_services()
        project = _optional_str(payload, "project")
        hostname = _optional_str(payload, "hostname") or ""
        access_token = _optional_str(payload, "access_token") or ""
        _check_setup_sizes(payload, settings.max_label_config_bytes)
        config = _label_config(payload, "schema", {})
        _check_model_paths(services, config)
        try:
            services.save_setup(project, hostname.rstrip("/"), access_token, payload.get("schema"), access.trusted(request))
        except SetupConflict as exc:
            raise BadRequest(str(exc), 409) from None
        services.report_config_in_background(config, project)  # loads the models: Label Studio should not wait on it
        services.check_token_in_background(project)
        return {"model_version": services.model_version(config, project)}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        limits = RequestLimits.starting_now(settings.predict_time_limit)  # from arrival: waiting for a thread counts
        payload = await read_json(request, settings.max_request_bytes)
        services = get_services()
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of Label Studio tasks")
        project = _optional_str(payload, "project")
        saved = services.setup_store.load(project)
        config = _label_config(payload, "label_config", saved)
        params = payload.get("params")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = params.get("context")
        credentials = services.credentials(project)
        version = services.model_version(config, project)
        if context:
            if not isinstance(context, dict) or not isinstance(context.get("result", []), list):
                raise BadRequest("'params.context' must be an object with a 'result' list")
            if not all(isinstance(task, dict) and isinstance(task.get("data") or {}, dict) for task in tasks):
                raise BadRequest("an interactive request's task must be an object whose 'data' is an object")
            return {"results": await run_in_threadpool(_interactive, services, tasks, config, context, credentials,
                                                       version)}
        try:
            await run_in_threadpool(services.report_config, config, project)
            results = await _until_disconnected(request, limits, run_in_threadpool(
                services.predictor.predict, tasks, config, credentials, version, project, limits))
        except (ModelPathError, PredictionConfigError) as exc:
            raise BadRequest(str(exc)) from None
        return {"results": results}

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        payload = await read_json(request, settings.max_request_bytes)
        services = get_services()
        answer = await run_in_threadpool(services.training.webhook, payload, services.credentials)
        if answer.status >= 400:
            raise BadRequest(answer.body["error"], answer.status)
        return JSONResponse(answer.body, status_code=answer.status)

    @app.get("/versions")
    async def versions() -> dict:
        services = get_services()
        return {"versions": await run_in_threadpool(_versions, services), "model_dir": str(settings.model_root_path),
                "trained": await run_in_threadpool(services.training.versions)}

    @app.get("/metrics")
    async def metrics() -> Response:
        services = get_services()
        for key, seconds in services.models.loaded().items():
            services.metrics.model_load_seconds.labels(str(key[1])).set(seconds)
        text = services.metrics.render() + (await run_in_threadpool(services.training.metrics_text)).encode()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


KNOWN_PATHS = {"/", "/health", "/setup", "/predict", "/webhook", "/versions", "/metrics"}


def _log_unknown_route(request: Request, status: int) -> None:
    what = "method not allowed" if status == 405 else "no such endpoint"
    logger.warning("%s %s: %s (HTTP %d). The backend answers /setup, /predict, /webhook, /health at its root: connect "
                   "its root URL in Label Studio (http://host:port, nothing after the port)",
                   request.method, request.url.path[:200], what, status)


SETUP_FIELD_LIMITS = {"hostname": 2048, "access_token": 8192}  # a URL; a JWT is under 1 KB


def _check_setup_sizes(payload: dict, max_label_config_bytes: int) -> None:
    """/setup's fields are stored for every project: sizes a real Label Studio never comes near are refused."""
    limits = SETUP_FIELD_LIMITS | {"schema": max_label_config_bytes}
    for key, limit in limits.items():
        value = payload.get(key)
        if isinstance(value, str) and len(value.encode()) > limit:
            setting = " (MAX_LABEL_CONFIG_BYTES)" if key == "schema" else ""
            raise BadRequest(f"'{key}' is {len(value.encode())} bytes, more than {limit}{setting}", 413)


def _check_model_paths(services: Services, config: LabelConfig) -> None:
    """Refuse unusable model paths at /setup without loading the models (Label Studio waits on it)."""
    for control in config.prediction_controls:
        choice = model_choice(control, services.settings)
        try:
            path = resolve_model_path(services.settings.model_root_path, choice.path_value, choice.setting,
                                      choice.trained)
        except ModelPathError as exc:
            raise BadRequest(str(exc)) from None
        if not model_exists(path) and not is_downloadable_asset(path.name):
            raise BadRequest(f"{choice.setting}: model file '{choice.path_value}' not found in MODEL_ROOT ({services.settings.model_root_path})")
        if problem := not_a_model(path):
            named, message = f"<{control.tag} name=\"{control.name}\">", f"{choice.setting}: {problem}"
            raise BadRequest(message if named in message else f"{named}: {message}")


async def _until_disconnected(request: Request, limits: RequestLimits, work: Awaitable[Any]) -> Any:
    """`work`'s result; meanwhile a client that disconnects sets `limits.stopped`, so the work ends at its next task."""
    async def watch() -> None:
        # receive() after the body waits for the disconnect; is_disconnected() polls through the middleware's
        # receive in a cancelled scope, which loses the message
        while (await request.receive())["type"] != "http.disconnect":
            await anyio.sleep(0.1)
        limits.stopped.set()

    watcher = asyncio.ensure_future(watch())  # not a task group: the work's own exception stays unwrapped
    try:
        return await work
    finally:
        watcher.cancel()


def _refusal(request: Request, exc: BadRequest) -> JSONResponse:
    project = getattr(request.state, "project", None)
    logger.warning("%s %s%s answered %d: %s", request.method, request.url.path,
                   f" (project {project})" if project else "", exc.status, exc)
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


def _versions(services: Services) -> list[str]:
    """The default models' version, then the version of each labeling config /setup told about."""
    versions = [services.model_version()]
    for project, xml in services.setup_store.saved_configs():
        try:
            versions.append(services.model_version(parse_label_config(xml), project))
        except LabelConfigError:
            continue
    return list(dict.fromkeys(versions))


def _interactive(services: Services, tasks: list, config: LabelConfig, context: dict,
                 credentials: Credentials | None, version: str) -> list[dict]:
    if services.interactive is None:
        logger.warning("interactive request ignored: no SAM model is configured (set MODEL_NAME=sam and SAM_CHECKPOINT_FILE)")
        return [prediction([], version) for _ in tasks]
    if has_video_prompts(context):
        from backend.interactive.video import video_predictions  # imports Meta's sam2 package

        return video_predictions(services.interactive, services.models, services.settings, services.fetcher, tasks, config,
                                 context, credentials, version)
    return services.interactive.predict(tasks, config, context, credentials, version)
