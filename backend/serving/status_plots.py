"""The status page's training curves: loss and val mAP per epoch, drawn by matplotlib into a PNG.

Drawing takes a CPU core for about a tenth of a second, so one figure is drawn at a time per process and
the history is cut to its last MAX_EPOCHS rows (what a request can cost is bounded).
"""

from __future__ import annotations

import io
import threading

MAX_EPOCHS = 1000
_draw_lock = threading.Lock()


def curves_png(history: list[dict], metric: str, epochs: int, final_history: list[dict] | None = None) -> bytes:
    """Training loss per epoch (and the final run on all pictures, when there is one) beside the val split's
    mAP50 and `metric` (mAP50-95 or top-1) per epoch, on an axis of `epochs` epochs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [row for row in history if isinstance(row, dict)][-MAX_EPOCHS:]
    final = [row for row in final_history or [] if isinstance(row, dict)][-MAX_EPOCHS:]
    with _draw_lock:
        figure = Figure(figsize=(8.4, 2.8), dpi=90, layout="constrained")
        loss_axes, map_axes = figure.subplots(1, 2)
        loss_axes.plot([r["epoch"] for r in rows], [r.get("loss", 0.0) for r in rows], marker=".", label="val-split run")
        if final:
            loss_axes.plot([r["epoch"] for r in final], [r.get("loss", 0.0) for r in final], marker=".",
                           label="final run, all pictures")
            loss_axes.legend(fontsize=8)
        loss_axes.set(title="training loss", xlabel="epoch")
        scored = [r for r in rows if "map" in r]
        if metric != "top-1":
            map_axes.plot([r["epoch"] for r in scored], [r.get("map50", 0.0) for r in scored], marker=".", label="mAP50")
        map_axes.plot([r["epoch"] for r in scored], [r.get("map", 0.0) for r in scored], marker=".", label=metric)
        map_axes.set(title="val split", xlabel="epoch", ylim=(0, 1.02))
        map_axes.legend(fontsize=8, loc="lower right")
        last = max([min(int(epochs), MAX_EPOCHS)] + [r["epoch"] for r in rows + final])
        for axes in (loss_axes, map_axes):
            axes.grid(alpha=0.3)
            axes.set_xlim(0.5, last + 0.5)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
