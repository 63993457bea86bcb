"""Training quality on a small project: the backend's training job against a plain Ultralytics fine-tune.

    python -m bench.bench_train_quality [--tasks detect pose classify] [--annotated 28] [--held_out 24]
                                        [--epochs 20] [--imgsz 160] [--batch 8] [--threads 2]

For each task a project of `--annotated` synthetic pictures (tools.shapes_dataset / tools.shapes_tasks)
is annotated with labels the start-up demo model does not know (disc/box/wedge, wedge/box, Round/Boxy/
Pointy). The job runs as "Start Training" runs it (backend.training.run against a Label Studio
stand-in on 127.0.0.1) and the model it leaves serving the project is scored; the plain fine-tune is
`YOLO(start-up model).train()` with Ultralytics' defaults on the same pictures, written straight from the
generators with the same 80/20 split the job uses (val on, best epoch kept), in this process with the
job's thread count (run the benchmark under `nice` to lower both alike). Both are scored on the same
`--held_out` pictures no one trained on, at the image size each predicts at when served, with the
0.25 confidence threshold of the demo configs: box mAP50 (detect), keypoint mAP50 (pose), top-1
(classify). Printed: each figure, the ratio job/plain (goal >= 1.0) and the seconds of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from backend.settings import Settings
from backend.training import trainer
from backend.training.jobs import JobBoard
from backend.training.registry import ProjectModels
from backend.training.run import JobSpec, run_job
from tests.task_training_data import RENAMES, annotated_tasks, renamed_config, renamed_results
from tests.training_stand_in import TOKEN, TrainingLabelStudio
from tools.shapes_dataset import generate_image
from tools.shapes_tasks import POSE_CLASSES, generate_classify_image, generate_pose_image, pose_label_lines

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BASE = {"detect": "demo-shapes-det.pt", "pose": "demo-shapes-pose.pt", "classify": "demo-shapes-cls.pt"}
DETECT_NAMES = ("disc", "box", "wedge")  # circle, square, triangle renamed
DETECT_CONFIG = ("<View><Image name=\"image\" value=\"$image\"/><RectangleLabels name=\"rect\" toName=\"image\">"
                 + "".join(f"<Label value=\"{name}\"/>" for name in DETECT_NAMES) + "</RectangleLabels></View>")
CONF = 0.25
FIRST_SEED = {"detect": 71_000, "pose": 72_000, "classify": 73_000}
HELD_OUT_OFFSET = 500
PROJECT = 1
PROJECT_UID = f"{PROJECT}.1700000000"  # the stand-in's projects were created at tests/training_stand_in.CREATED_AT


def detect_truth(seed: int) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """The picture and its shapes as (class, pixel box x0 y0 x1 y1) of the visible part."""
    sample = generate_image(seed)
    boxes = []
    for instance in sample.instances:
        ys, xs = np.nonzero(instance.mask)
        if len(xs):
            boxes.append((instance.class_id, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
    return sample.image, boxes


def detect_tasks(seeds: range, project: int) -> tuple[dict[str, bytes], list[dict]]:
    files, tasks = {}, []
    for number, seed in enumerate(seeds):
        image, boxes = detect_truth(seed)
        height, width = image.shape[:2]
        name = f"detect-{seed}.png"
        files[name] = cv2.imencode(".png", image)[1].tobytes()
        result = [{"id": f"r{seed}-{i}", "from_name": "rect", "to_name": "image", "type": "rectanglelabels",
                   "original_width": width, "original_height": height,
                   "value": {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                             "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [DETECT_NAMES[c]]}}
                  for i, (c, (x0, y0, x1, y1)) in enumerate(boxes)]
        tasks.append({"id": 3000 + number, "data": {"image": f"/data/upload/{project}/{name}"},
                      "annotations": [{"id": 30000 + number, "result": result, "was_cancelled": False,
                                       "created_at": "2026-12-01T00:00:00Z"}], "predictions": []})
    return files, tasks


def stand_in(task: str, seeds: range, project: int) -> TrainingLabelStudio:
    if task == "detect":
        ls = TrainingLabelStudio(project, [], label_config=DETECT_CONFIG)
        ls.files, ls.tasks = detect_tasks(seeds, project)
        return ls
    ls = TrainingLabelStudio(project, [], label_config=renamed_config(task))
    ls.files, ls.tasks = annotated_tasks(task, seeds, lambda name: f"/data/upload/{project}/{name}")
    for entry in ls.tasks:
        entry["annotations"][0]["result"] = renamed_results(task, entry["annotations"][0]["result"])
    return ls


def class_names(task: str) -> tuple[str, ...]:
    if task == "detect":
        return DETECT_NAMES
    if task == "pose":
        return tuple(RENAMES["pose"][name] for name in POSE_CLASSES)
    return tuple(RENAMES["classify"][name.capitalize()] for name in ("circle", "square", "triangle"))


def write_split(root: Path, split: str, task: str, seeds: range, index_of: dict[str, int]) -> None:
    """Pictures and labels of `seeds` straight from the generators, class ids as `index_of` numbers names."""
    names = class_names(task)
    for seed in seeds:
        if task == "classify":
            image, class_id = generate_classify_image(seed)
            folder = root / split / names[class_id]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{seed}.png"), image)
            continue
        if task == "detect":
            image, boxes = detect_truth(seed)
            size = image.shape[0]
            lines = [f"{index_of[names[c]]} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
                     f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}" for c, (x0, y0, x1, y1) in boxes]
        else:
            image, instances = generate_pose_image(seed)
            lines = [" ".join([str(index_of[names[int(line.split()[0])]])] + line.split()[1:])
                     for line in pose_label_lines(instances, image.shape[0])]
        for kind in ("images", "labels"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / split / f"{seed}.png"), image)
        (root / "labels" / split / f"{seed}.txt").write_text("".join(line + "\n" for line in lines))


def write_yaml(root: Path, task: str, names: list[str]) -> Path:
    import yaml

    extra = {"kpt_shape": [4, 3]} if task == "pose" else {}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", **extra,
                                    "names": dict(enumerate(names))}, sort_keys=False))
    return path


def held_out_score(weights: Path, task: str, seeds: range, work: Path) -> float:
    """Box mAP50 / keypoint mAP50 / top-1 of the model on the held-out pictures at the size it is served at."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    model_names = [str(model.names[i]) for i in sorted(model.names)]
    root = work / f"held-out-{weights.stem}-{len(os.listdir(work))}"
    index_of = {name: i for i, name in enumerate(model_names)}
    if task == "classify":
        write_split(root, "val", task, seeds, index_of)
        images = sorted(root.glob("val/*/*.png"))
        results = model.predict([str(p) for p in images], verbose=False, device="cpu")
        return float(np.mean([model_names[int(r.probs.top1)] == p.parent.name for r, p in zip(results, images)]))
    if not set(class_names(task)) <= set(model_names):
        return 0.0  # the model cannot output the project's labels (a rejected job leaves the start-up model)
    write_split(root, "val", task, seeds, index_of)
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    metrics = model.val(data=str(write_yaml(root, task, model_names)), split="val", conf=CONF, batch=8, device="cpu",
                        workers=0, plots=False, verbose=False, project=str(work), name="val", exist_ok=True)
    return float(metrics.pose.map50 if task == "pose" else metrics.box.map50)


def run_plain(task: str, seeds: range, settings: Settings, work: Path) -> Path:
    """Ultralytics' own fine-tune: defaults, val on the 20% split, best epoch kept."""
    import torch
    from ultralytics import YOLO

    names = list(class_names(task))
    root = work / "plain-data"
    cut = len(seeds) - max(1, round(len(seeds) * 0.2))
    index_of = {name: i for i, name in enumerate(names)}
    write_split(root, "train", task, seeds[:cut], index_of)
    write_split(root, "val", task, seeds[cut:], index_of)
    data = root if task == "classify" else write_yaml(root, task, names)
    model = YOLO(str(MODELS_DIR / BASE[task]))
    model.add_callback("on_train_start", lambda _trainer: torch.set_num_threads(settings.train_threads))
    model.train(data=str(data), epochs=settings.train_epochs, imgsz=settings.train_imgsz, batch=settings.train_batch,
                device="cpu", workers=0, project=str(work), name="plain", exist_ok=True, plots=False, verbose=False)
    return work / "plain" / "weights" / "best.pt"


def run_backend_job(task: str, seeds: range, settings: Settings) -> tuple[Path, dict]:
    board = JobBoard(settings.model_root_path)
    board.request(PROJECT_UID, "bench")
    with stand_in(task, seeds, PROJECT) as ls:
        run_job(settings, JobSpec(PROJECT_UID, board.state(PROJECT_UID)["job_id"], ls.url, TOKEN), board)
    state = board.state(PROJECT_UID)
    served = ProjectModels(settings.model_root_path, PROJECT_UID).promoted()
    return (served.path if served else MODELS_DIR / BASE[task]), state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["detect", "pose", "classify"], choices=sorted(BASE))
    parser.add_argument("--annotated", type=int, nargs="+", default=[28], help="annotated pictures (several: one run each)")
    parser.add_argument("--held_out", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip_plain", action="store_true", help="only the job (the after-N-annotations figures)")
    args = parser.parse_args(argv)
    limit_resources = trainer.limit_resources  # the job's threads, without lowering this process' priority again
    trainer.limit_resources = lambda threads: limit_resources(threads, niceness=0)
    rows = []
    for task in args.tasks:
        for annotated in args.annotated:
            work = Path(tempfile.mkdtemp(prefix=f"bench-quality-{task}-"))
            try:
                root = work / "models"
                root.mkdir()
                shutil.copyfile(MODELS_DIR / BASE[task], root / BASE[task])
                settings = Settings.load({
                    "model_root": str(root), "yolo_det_model": BASE["detect"], "cache_dir": str(work / "cache"),
                    "device": "cpu", "train_epochs": args.epochs, "train_imgsz": args.imgsz, "train_batch": args.batch,
                    "train_threads": args.threads, "train_min_images": 2, "model_score_threshold": CONF}, environ={})
                seeds = range(FIRST_SEED[task], FIRST_SEED[task] + annotated)
                held_out = range(FIRST_SEED[task] + HELD_OUT_OFFSET, FIRST_SEED[task] + HELD_OUT_OFFSET + args.held_out)
                started = time.perf_counter()
                served, state = run_backend_job(task, seeds, settings)
                job_seconds = time.perf_counter() - started
                job = held_out_score(served, task, held_out, work)
                print(f"{task} {annotated}: job {state.get('state')}: {state.get('message')}", flush=True)
                plain = plain_seconds = float("nan")
                if not args.skip_plain:
                    started = time.perf_counter()
                    plain_weights = run_plain(task, seeds, settings, work)
                    plain_seconds = time.perf_counter() - started
                    plain = held_out_score(plain_weights, task, held_out, work)
                rows.append((task, annotated, job, plain, job_seconds, plain_seconds))
                print(f"{task} {annotated}: job {job:.3f} ({job_seconds:.0f} s) plain {plain:.3f} "
                      f"({plain_seconds:.0f} s)", flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    metric = {"detect": "box mAP50", "pose": "keypoint mAP50", "classify": "top-1"}
    print(f"\n{args.epochs} epochs at {args.imgsz} px, batch {args.batch}, {args.threads} threads; "
          f"{args.held_out} held-out pictures, conf {CONF}")
    print("| task | annotated | held-out figure | job | plain Ultralytics | job/plain | job s | plain s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for task, annotated, job, plain, job_seconds, plain_seconds in rows:
        print(f"| {task} | {annotated} | {metric[task]} | {job:.3f} | {plain:.3f} | {job / plain if plain else float('nan'):.2f} "
              f"| {job_seconds:.0f} | {plain_seconds:.0f} |")


if __name__ == "__main__":
    main()
