"""The status page: the backend's root URL opened in a browser (Accept: text/html).

    GET  /                               the page (Label Studio's JSON calls to / and /health are unchanged)
    GET  /status/jobs                    each project's job: state, epoch of N, elapsed, time left (the page polls it)
    GET  /status/curves/<project>.png    loss and val mAP per epoch: the running job's, else the newest version's
    GET  /status/runs/<project>/<version>/<file>   Ultralytics' plots of a version (registry run folders only)
    POST /status/rollback                {"project": "12.1700000000", "version": 2}: serve that version (as the registry CLI)

Who may open what: every route needs what the backend's other endpoints need (backend/serving/access.py:
the basic-auth credentials when set, else a caller on this machine unless ALLOW_UNAUTHENTICATED). A
rollback steers the backend: it needs a trusted caller (`caller_trusted`: the credentials, or without
them a loopback caller; anonymous callers elsewhere get 403 even when open) and a JSON body, which a
cross-site form cannot send. Costs are bounded: files are served only from a version's run folder, by a
plain file name, at most RUN_FILE_BYTES; a curves figure is drawn one at a time from at most 1,000 epochs.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from backend.serving.access import access_policy, caller_trusted
from backend.serving.status_html import render_page
from backend.serving.status_plots import curves_png
from backend.sources.label_studio import project_uid
from backend.training.registry import ProjectModels
from backend.training.run import RUN_FILE_BYTES

logger = logging.getLogger(__name__)

RUN_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(png|jpg)$")
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}


def wants_html(request: Request) -> bool:
    """A browser's navigation (text/html before any JSON in Accept); Label Studio sends */* or JSON."""
    accept = request.headers.get("accept", "").lower()
    return "text/html" in accept and "application/json" not in accept.split("text/html", 1)[0]


def job_progress(state: dict, now: float | None = None) -> dict:
    """What the progress bar shows: state, phase, epoch of N, seconds elapsed and (roughly) left in the phase."""
    now = time.time() if now is None else now
    epoch, epochs = int(state.get("epoch") or 0), int(state.get("epochs") or 0)
    started = state.get("started_at") or state.get("queued_at")
    progress = {"project": state.get("project"), "state": state.get("state"), "phase": state.get("phase"),
                "epoch": epoch, "epochs": epochs, "message": state.get("message"), "version": state.get("version"),
                "elapsed": round(now - float(started), 1) if started and state.get("state") == "running" else None,
                "left": None, "updated_at": state.get("updated_at")}
    phase_started = state.get("phase_started_at")
    if state.get("state") == "running" and phase_started and 0 < epoch < epochs:
        progress["left"] = round((now - float(phase_started)) / epoch * (epochs - epoch), 1)
    return progress


def project_view(services: Any, state: dict) -> dict:
    """One project on the page: its job, every version's card (newest first) and which one is served."""
    models = ProjectModels(services.settings.model_root_path, str(state["project"]))
    promoted = models.promoted()
    cards = sorted((card for card in models.cards() if isinstance(card.get("version"), int)),
                   key=lambda card: card["version"], reverse=True)
    for card in cards:
        run_dir = models.run_dir(card["version"])
        card["run_files"] = sorted(p.name for p in run_dir.iterdir() if RUN_FILE.match(p.name)) if run_dir.is_dir() else []
        card["served"] = bool(promoted and promoted.version == card["version"])
        card["has_model"] = models.model_path(card["version"]).is_file()  # TRAIN_KEEP_VERSIONS prunes old ones
    return {"project": str(state["project"]), "job": job_progress(state), "versions": cards,
            "served": promoted.name if promoted else None,
            "title": next((card.get("project_title") for card in cards if card.get("project_title")), "")}


def page_view(services: Any, access_mode: str) -> dict:
    settings = services.settings
    return {"settings": settings, "access": access_mode, "device": services.device, "version": services.model_version(),
            "loaded": sorted(_under(settings.model_root_path, str(key[1])) for key in services.models.loaded()), "failed": dict(services.model_errors),
            "projects": [project_view(services, state) for state in services.training.board.all_states()]}


def _under(root: Path, path: str) -> str:
    """A model file as a path relative to MODEL_ROOT when it lies there (as `model_path` names it)."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def add_status_routes(app: FastAPI, get_services: Any) -> None:
    @app.get("/status/jobs")
    async def jobs() -> list[dict]:
        services = get_services()
        return [job_progress(state) for state in await run_in_threadpool(services.training.board.all_states)]

    @app.get("/status/curves/{project}.png")
    async def curves(project: str) -> Response:
        services = get_services()
        figure = await run_in_threadpool(_curves_for, services, project)
        if figure is None:
            return _refuse(404, f"project {project} has no training curves yet")
        return Response(figure, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/status/runs/{project}/{version}/{name}")
    async def run_file(project: str, version: int, name: str) -> Response:
        services = get_services()
        if not RUN_FILE.match(name) or project_uid(project) != project:
            return _refuse(400, "a run file is a project uid, a version number and a plain .png or .jpg file name")
        directory = ProjectModels(services.settings.model_root_path, project).run_dir(version)
        path = directory / name
        if not path.is_file() or path.resolve().parent != directory.resolve():
            return _refuse(404, f"project {project} version {version} has no file {name}")
        if path.stat().st_size > RUN_FILE_BYTES:
            return _refuse(413, f"{name} is larger than {RUN_FILE_BYTES} bytes")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])

    @app.post("/status/rollback")
    async def rollback(request: Request) -> Response:
        services = get_services()
        if not caller_trusted(request):
            return _refuse(403, "rolling back needs the backend's basic-auth credentials, or a request from this "
                                "machine (loopback) when none are set")
        if "application/json" not in request.headers.get("content-type", ""):
            return _refuse(415, "send the rollback as JSON: {\"project\": \"12.1700000000\", \"version\": 2}")
        try:
            body = await request.json()
            project, version = str(body["project"]), int(body["version"])
            models = ProjectModels(services.settings.model_root_path, project)
        except (ValueError, KeyError, TypeError):
            return _refuse(400, "the body must be JSON {\"project\": \"<project uid>\", \"version\": <number>}")
        try:
            await run_in_threadpool(models.promote, version)
        except ValueError as exc:
            return _refuse(404, str(exc))
        logger.warning("project %s: version %d served from now on (rollback from the status page, client %s)",
                       project, version, request.client.host if request.client else "?")
        return JSONResponse({"project": project, "version": version, "served": models.model_path(version).stem})


def html_page(services: Any, request: Request) -> HTMLResponse:
    view = page_view(services, access_policy(request).mode)
    return HTMLResponse(render_page(view), headers={"Cache-Control": "no-store"})


def _curves_for(services: Any, project: str) -> bytes | None:
    if project_uid(project) != project:
        return None
    state = services.training.board.state(project)
    if state.get("state") == "running" and state.get("history"):
        tried = max(int(state.get("epochs") or 0), len(state["history"])) if state.get("phase") == "training" else 0
        return curves_png(state["history"], str(state.get("metric") or "mAP50-95"), tried, state.get("final_history"))
    models = ProjectModels(services.settings.model_root_path, project)
    for version in reversed(models.versions()):
        card = models.card(version) or {}
        if card.get("history"):
            return curves_png(card["history"], card.get("metric", "mAP50-95"), int(card.get("epochs") or 0))
    return None


def _refuse(status: int, message: str) -> JSONResponse:
    logger.warning("status page answered %d: %s", status, message)
    return JSONResponse({"error": message}, status_code=status)
