"""Benchmark: tools.preannotate in one process vs --ray with 1 and 2 actors, side by side in one run,
against the stand-in Label Studio API (tests/fake_label_studio_api.py) serving generated tasks on
one synthetic shapes image (Local Storage), with the demo models and a Rectangle + Polygon + Brush
config. Reports tasks/s (whole command: start-up, model loading and Ray included) and the peak
memory of the job's process tree (driver, Ray's processes and actors), and, with --memory_tasks,
the single-process peak for a larger project to show memory stays flat.

    python -m bench.bench_preannotate [--tasks 200] [--memory_tasks 10000]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import psutil

from tools.shapes_dataset import generate_image

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="rect" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></PolygonLabels>
  <BrushLabels name="brush" toName="image"><Label value="circle"/><Label value="square"/><Label value="triangle"/></BrushLabels>
</View>"""


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run(work: Path, n_tasks: int, extra: list[str]) -> tuple[float, float, str]:
    """(tasks/s, peak RSS MB of the job's process tree, summary) of one preannotate run on a fresh stand-in."""
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_label_studio_api", "--tasks", str(n_tasks),
                               "--image_url", "/data/local-files/?d=shapes.png", "--label_config", str(work / "config.xml")],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        command = [sys.executable, "-m", "tools.preannotate", "--ls_url", url, "--api_key", "stand-in-token",
                   "--project", "7", "--with", f"model_root={REPO_ROOT / 'models'}", "yolo_det_model=demo-shapes-det.pt",
                   "yolo_seg_model=demo-shapes-seg.pt", f"local_files_document_root={work}", f"cache_dir={work / 'cache'}",
                   "device=cpu", "model_score_threshold=0.25", *extra]
        started = time.monotonic()
        job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        watched, peak = psutil.Process(job.pid), 0
        while job.poll() is None:
            peak = max(peak, tree_rss(watched))
            time.sleep(0.2)
        seconds = time.monotonic() - started
        out = job.stdout.read()
        if job.returncode != 0 or f"predicted and written: {n_tasks}" not in out:
            raise SystemExit(f"preannotate {' '.join(extra)} failed ({job.returncode}):\n{out}")
        return n_tasks / seconds, peak / 2**20, out
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="tasks per throughput run (default 200)")
    parser.add_argument("--memory_tasks", type=int, default=0, help="also a single-process run of this many tasks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        cv2.imwrite(str(work / "shapes.png"), generate_image(5000).image)
        (work / "config.xml").write_text(CONFIG)
        rows = []
        for name, extra in (("single process", []), ("--ray, 1 actor", ["--ray", "--actors", "1"]),
                            ("--ray, 2 actors", ["--ray", "--actors", "2"])):
            rate, peak, out = run(work, args.tasks, extra)
            rows.append((name, args.tasks, rate, peak))
            job_line = re.search(r"tasks read: .*?tasks/s\)", out).group(0)
            print(f"{name}: {args.tasks} tasks, {rate:.1f} tasks/s, peak RSS {peak:.0f} MB ({job_line})", flush=True)
        if args.memory_tasks:
            rate, peak, _ = run(work, args.memory_tasks, [])
            rows.append(("single process", args.memory_tasks, rate, peak))
            print(f"single process: {args.memory_tasks} tasks, {rate:.1f} tasks/s, peak RSS {peak:.0f} MB", flush=True)
        base = rows[0][2]
        print("\n| run | tasks | tasks/s | vs single | peak RSS (process tree) |\n| --- | --- | --- | --- | --- |")
        for name, n, rate, peak in rows:
            print(f"| {name} | {n} | {rate:.1f} | {rate / base:.2f}x | {peak:.0f} MB |")


if __name__ == "__main__":
    main()
