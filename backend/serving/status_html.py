"""The status page's HTML, rendered on the server from the page view of backend/serving/status_page.py.

Every value from files or settings is escaped; the page's only script polls /status/jobs every two
seconds to move the progress bars and redraw the curves, and reloads the page when a job's state
changes (a new version appears) or after a rollback.
"""

from __future__ import annotations

from html import escape
from typing import Any

from backend.serving.status_assets import SCRIPT, STYLE

ACCESS_MODES = {"protected": "protected: answers callers on this machine only (no BASIC_AUTH_USER set)",
                "basic auth": "basic auth: every caller needs BASIC_AUTH_USER's credentials",
                "open": "open (ALLOW_UNAUTHENTICATED): anyone who reaches the port; rollbacks from this machine only"}
MODEL_SETTINGS = ("yolo_det_model", "yolo_seg_model", "yolo_pose_model", "yolo_obb_model", "yolo_cls_model")
PLOTS = (("confusion_matrix_normalized.png", "confusion matrix (normalized)"),
         ("confusion_matrix.png", "confusion matrix"))
VAL_PICTURES = (("val_batch0_labels.jpg", "annotated"), ("val_batch0_pred.jpg", "predicted"))


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def render_page(view: dict) -> str:
    projects = "".join(_project(project) for project in view["projects"]) or \
        "<p class=muted>No project has trained yet: \"Start Training\" in Label Studio starts the first job.</p>"
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>ML backend status</title><style>{STYLE}</style></head><body>"
            f"<header><h1>Label Studio ML backend</h1><span class=muted>YOLO + SAM · {_e(view['version'])}</span></header>"
            f"<main>{_mode(view)}{projects}</main><script>{SCRIPT}</script></body></html>")


def _mode(view: dict) -> str:
    settings = view["settings"]
    training = f"RQ queue {settings.train_queue}" if settings.train_queue else "a child process of the worker"
    rows = [("device", view["device"]),
            ("interactive (SAM)", settings.model_name or "off"),
            ("YOLO boxes to SAM masks", "on" if settings.yolo_sam else "off"),
            ("workers × threads", f"{settings.workers} × {settings.threads}"),
            ("training runs in", f"{training}, {settings.train_epochs} epochs at {settings.train_imgsz} px on "
                                 f"{settings.train_device or 'the serving device'}"),
            ("mode", ACCESS_MODES.get(view["access"], view["access"]))]
    models = [(name.upper(), getattr(settings, name)) for name in MODEL_SETTINGS]
    loaded = "".join(f"<li>{_e(name)}</li>" for name in view["loaded"]) or "<li class=muted>none yet</li>"
    failed = "".join(f"<li class=bad>{_e(name)}: {_e(reason)}</li>" for name, reason in view["failed"].items())
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    model_table = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in models)
    return (f"<section class=card id=mode><h2>How it runs</h2><div class=columns><table class=kv>{table}</table>"
            f"<table class=kv>{model_table}</table></div>"
            f"<p class=muted>Models loaded in this worker:</p><ul class=inline>{loaded}{failed}</ul></section>")


def dom_id(project: str) -> str:
    """A project uid ("12.1700000000") as a part of element ids: "12-1700000000" (the script does the same)."""
    return str(project).replace(".", "-")


def _project(project: dict) -> str:
    uid, job = project["project"], project["job"]
    number = dom_id(uid)
    title = f" · {_e(project['title'])}" if project["title"] else ""
    served = f"serves <b>{_e(project['served'])}</b>" if project["served"] else "serves the configured models"
    versions = project["versions"]
    newest = versions[0] if versions else None
    # The script redraws the curves when the key changes; a job before its first epoch has none to draw yet.
    drawn = any(v.get("history") for v in versions) or (job["state"] == "running" and job["epoch"] > 0)
    key = f"{job['phase']} {job['epoch']}" if drawn else ""
    source = f" src='/status/curves/{_e(uid)}.png?e={_e(key)}'" if drawn else ""
    curves = (f"<img class=curves id=curves-{number} alt='training curves' data-key='{_e(key)}' "
              f"onload=\"this.classList.add('shown')\"{source}>" if drawn or job["state"] == "running" else "")
    return (f"<section class=card id=project-{number} data-state='{_e(job['state'])}'>"
            f"<h2>Project {_e(uid.partition('.')[0])}{title} <span class=muted>({_e(uid)})</span></h2>"
            f"<p>{served}</p>{_job(job)}{curves}"
            f"{_details(uid, newest) if newest else ''}{_versions(uid, versions)}</section>")


def _job(job: dict) -> str:
    state = job["state"] or "idle"
    if state in ("running", "queued"):
        share = 100 * job["epoch"] / job["epochs"] if job["epochs"] else 0
        return (f"<div class=job id=job-{dom_id(job['project'])} data-state='{_e(state)}'>"
                f"<div class=bar><div class=fill style='width:{share:.1f}%'></div></div>"
                f"<p class=progress-text>{_e(progress_text(job))}</p></div>")
    if state in ("failed", "refused"):
        return (f"<div class='job failure' id=job-{dom_id(job['project'])} data-state='{_e(state)}'>"
                f"<b>Last job {_e(state)}:</b> {_e(job['message'])}</div>")
    return (f"<div class=job id=job-{dom_id(job['project'])} data-state='{_e(state)}'><p class=muted>Last job: "
            f"{_e(state)}{': ' + _e(job['message']) if job.get('message') else ''}</p></div>")


def progress_text(job: dict) -> str:
    """`training: epoch 3 of 20 · 0:42 elapsed · about 1:30 left` (the page's script writes the same)."""
    if job["state"] == "queued":
        return "queued"
    text = f"{job['phase']}"
    if job["epochs"]:
        text += f": epoch {job['epoch']} of {job['epochs']}"
    text += f" · {_duration(job['elapsed'])} elapsed"
    if job.get("left") is not None:
        text += f" · about {_duration(job['left'])} left"
    return text


def _details(uid: str, card: dict) -> str:
    """The newest version: per-class figures of it and of the model served when it trained, its plots."""
    metric = card.get("metric", "mAP50-95")
    new, previous = card.get("per_class_new") or {}, card.get("per_class_previous") or {}
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{_figure(new.get(name))}</td><td>{_figure(previous.get(name))}</td></tr>"
                   for name in card.get("classes") or [] if name in new or name in previous)
    table = (f"<table class=grid id=per-class-{dom_id(uid)}><caption>v{_e(card['version'])} per class, {_e(metric)} on the "
             f"val split</caption><tr><th>class</th><th>new (v{_e(card['version'])})</th><th>served before</th></tr>"
             f"{rows}</table>") if rows else ""
    files = set(card.get("run_files") or [])
    base = f"/status/runs/{_e(uid)}/{int(card['version'])}"
    matrix = next(((name, label) for name, label in PLOTS if name in files), None)
    shown = ([matrix] if matrix else []) + [(name, f"val pictures, {label}") for name, label in VAL_PICTURES if name in files]
    plots = "".join(f"<figure><a href='{base}/{name}' target=_blank><img src='{base}/{name}' alt='{label}'></a>"
                    f"<figcaption>{label} (click to enlarge)</figcaption></figure>" for name, label in shown)
    return f"<div class=details>{table}<div class=plots>{plots}</div></div>" if table or plots else ""


def _versions(uid: str, versions: list[dict]) -> str:
    if not versions:
        return ""
    rows = []
    for card in versions:
        metric = card.get("metric", "mAP50-95")
        action = ("<span class=served>served</span>" if card["served"] else
                  f"<button class=serve data-project='{_e(uid)}' data-version={int(card['version'])}>serve this version</button>"
                  if card.get("has_model") else "<span class=muted>model file pruned</span>")
        status_class = "bad" if card.get("status") == "rejected" else ""
        rows.append(f"<tr id=version-{dom_id(uid)}-{int(card['version'])}><td>v{_e(card['version'])}</td>"
                    f"<td class='{status_class}'>{_e(card.get('status'))}</td><td>{_e(metric)}</td>"
                    f"<td>{_figure(card.get('map_new'))}</td><td>{_figure(card.get('map_previous'))}</td>"
                    f"<td>{_e(card.get('images'))}</td><td>{_e(card.get('epochs'))}</td>"
                    f"<td>{_e(card.get('trained_on', 'train split'))}</td><td>{_e(card.get('finished_at'))}</td>"
                    f"<td>{action}</td></tr>")
    return (f"<table class=grid id=versions-{dom_id(uid)}><caption>Versions (val split figures of the new and the then "
            f"served model)</caption><tr><th>version</th><th>status</th><th>figure</th><th>new</th><th>served before</th>"
            f"<th>images</th><th>epochs</th><th>final model on</th><th>finished</th><th></th></tr>{''.join(rows)}</table>")
