"""Benchmark: Label Studio export with 1080p brush masks -> COCO (convert_to_rle_mask_coco).

    python bench/bench_convert.py [--tasks 1000] [--masks_per_task 3] [--workdir DIR]

Generates an export of TASKS tasks, each a 1920x1080 image (in a Label Studio media folder) with
MASKS_PER_TASK brush regions, then converts it in a child process with the command line users run
and prints tasks per second and the conversion's peak resident memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from formats.rle import mask_to_ls_rle  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1920, 1080
LABELS = ("car", "person", "tree", "road")
MASK_POOL = 40  # distinct masks; tasks draw theirs from this pool


def random_mask(rng: np.random.Generator) -> np.ndarray:
    """An object-like brush stroke: a filled irregular polygon plus a few blobs, 1-20% of the image."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    center = rng.uniform([200, 150], [WIDTH - 200, HEIGHT - 150])
    radius = rng.uniform(60, 350)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
    points = center + (radius * rng.uniform(0.6, 1.0, 24))[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
    cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    for _ in range(int(rng.integers(0, 4))):
        blob = center + rng.normal(0, radius, 2)
        cv2.circle(mask, (int(blob[0]), int(blob[1])), int(rng.uniform(10, 60)), 1, -1)
    return mask.astype(bool)


def write_export(workdir: Path, n_tasks: int, masks_per_task: int, seed: int = 0) -> tuple[Path, Path]:
    """The export (streamed to disk) and the Label Studio data dir holding its images."""
    rng = np.random.default_rng(seed)
    rles = [mask_to_ls_rle(random_mask(rng)) for _ in range(MASK_POOL)]
    data_dir = workdir / "label-studio"
    upload = data_dir / "media" / "upload" / "1"
    upload.mkdir(parents=True, exist_ok=True)
    image = np.clip(rng.normal(110, 40, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    template = upload / "template.jpg"
    cv2.imwrite(str(template), cv2.GaussianBlur(image, (9, 9), 3))
    export = workdir / "export.json"
    with open(export, "w") as out:
        out.write("[")
        for task_id in range(1, n_tasks + 1):
            name = f"{task_id:08x}-frame_{task_id:05d}.jpg"
            os.link(template, upload / name)
            results = [{"id": f"t{task_id}m{k}", "from_name": "tag", "to_name": "image", "type": "brushlabels",
                        "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0,
                        "value": {"format": "rle", "rle": rles[int(rng.integers(MASK_POOL))],
                                  "brushlabels": [LABELS[int(rng.integers(len(LABELS)))]]}}
                       for k in range(masks_per_task)]
            task = {"id": task_id, "data": {"image": f"/data/upload/1/{name}"},
                    "annotations": [{"id": task_id, "result": results, "was_cancelled": False,
                                     "created_at": "2024-05-01T10:00:00Z"}], "predictions": []}
            out.write(("" if task_id == 1 else ",\n") + json.dumps(task))
        out.write("]\n")
    template.unlink()
    return export, data_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--masks_per_task", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        export, data_dir = write_export(workdir, args.tasks, args.masks_per_task)
        print(f"generated {args.tasks} tasks x {args.masks_per_task} brush masks at {WIDTH}x{HEIGHT}: "
              f"{export.stat().st_size / 1e6:.0f} MB export in {time.perf_counter() - started:.0f} s")
        command = [sys.executable, "-m", "tools.convert_to_rle_mask_coco", "--json_file_path", str(export),
                   "--out_dir", str(workdir / "coco"), "--ls_data_dir", str(data_dir), "--strict"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout, done.stderr, sep="\n")
            return 1
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = usage.ru_maxrss / 1024  # Linux reports KiB
        cpu_seconds = usage.ru_utime + usage.ru_stime  # stable when other processes share the CPU
        masks = args.tasks * args.masks_per_task
        print(f"converted in {seconds:.1f} s wall ({args.tasks / seconds:.1f} tasks/s, {masks / seconds:.1f} masks/s), "
              f"{cpu_seconds:.1f} s CPU ({args.tasks / cpu_seconds:.1f} tasks per CPU second); peak RSS {peak_mb:.0f} MB; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
