"""Fine-tuning with Ultralytics and scoring models on a dataset's val split.

Runs inside the training process (never in a serving worker): `limit_resources` lowers its CPU
priority and thread count first.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)


class OutOfMemory(RuntimeError):
    pass


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    imgsz: int
    batch: int
    device: str  # cpu | cuda | cuda:N
    threads: int


@dataclass(frozen=True)
class Score:
    map50_95: float  # mean over the val split's classes (0 for those the model cannot output); classify: top-1
    note: str  # how the model's classes were matched to the dataset's
    per_class: dict[str, float] = field(default_factory=dict)  # the same figure per dataset class on the val split


@dataclass(frozen=True)
class Trained:
    weights: Path
    best_epoch: int  # the epoch whose weights were kept (by the val split's fitness)
    history: list[dict]  # per epoch: epoch, loss (training), map50, map (the task's val figures)
    run_dir: Path  # Ultralytics' run folder (results.csv, plots when asked)


# The val figures Ultralytics reports per epoch, by task: (mAP50 key, mAP50-95 key); classify: top-1 twice.
_EPOCH_METRICS = {"segment": ("metrics/mAP50(M)", "metrics/mAP50-95(M)"), "pose": ("metrics/mAP50(P)", "metrics/mAP50-95(P)"),
                  "classify": ("metrics/accuracy_top1", "metrics/accuracy_top1")}


def limit_resources(threads: int, niceness: int = 10) -> int:
    """Lower this process' priority and cap its threads (0: half the cores); returns the thread count."""
    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    try:
        os.nice(niceness)
    except OSError:
        logger.warning("training: could not lower the process priority")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    return threads


def ultralytics_device(device: str) -> str:
    if device == "cuda":
        return "0"
    return device.split(":", 1)[1] if device.startswith("cuda:") else device


def train(base_weights: Path, data_yaml: Path, work_dir: Path, options: TrainOptions,
          on_epoch: Callable[[int, int], None], task: str = "detect",
          label_of: Callable[[str], str | None] | None = None) -> Path:
    """`fine_tune` on the dataset of `data_yaml` (the best epoch on its val split); returns the weights file."""
    data = data_yaml.parent if task == "classify" else data_yaml
    return fine_tune(base_weights, data, work_dir, options, lambda epoch, epochs, _row: on_epoch(epoch, epochs), task,
                     label_of).weights


def fine_tune(base_weights: Path, data: Path, work_dir: Path, options: TrainOptions,
              on_epoch: Callable[[int, int, dict], None], task: str = "detect",
              label_of: Callable[[str], str | None] | None = None, epochs: int | None = None,
              validate: bool = True, name: str = "run") -> Trained:
    """Fine-tune `base_weights` on the dataset (a data.yaml; classification: its folder of train/<class>/,
    val/<class>/). The model's class names are the dataset's (Ultralytics replaces the head when the
    classes differ); a classification head starts lined up with the dataset's classes through `label_of`
    (backend/training/heads.py). `validate`: score every epoch on the val split and keep the best epoch
    (with Ultralytics' plots); else train `epochs` and keep the last."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(base_weights))
    history: list[dict] = []
    best = {"epoch": 0}
    map50_key, map_key = _EPOCH_METRICS.get(task, ("metrics/mAP50(B)", "metrics/mAP50-95(B)"))

    def epoch_end(trainer) -> None:  # noqa: ANN001 - Ultralytics' trainer
        epoch = int(trainer.epoch) + 1
        if epoch > int(trainer.epochs):  # the best weights' final evaluation reports itself as one epoch more
            return
        metrics = trainer.metrics or {}
        losses = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}
        row = {"epoch": epoch, "loss": round(sum(float(value) for value in losses.values()), 4)}
        if validate or epoch == int(trainer.epochs):
            row |= {"map50": round(float(metrics.get(map50_key, 0.0)), 4), "map": round(float(metrics.get(map_key, 0.0)), 4)}
        if trainer.fitness is not None and trainer.fitness == trainer.best_fitness:
            best["epoch"] = epoch
        history.append(row)
        on_epoch(epoch, int(trainer.epochs), row)

    def keep_threads(_trainer) -> None:  # noqa: ANN001 - Ultralytics lowers the count when it builds the trainer
        torch.set_num_threads(options.threads)

    model.add_callback("on_train_start", keep_threads)
    model.add_callback("on_fit_epoch_end", epoch_end)
    if task == "classify" and label_of is not None:
        from backend.training.heads import classify_head_callback

        model.add_callback("on_pretrain_routine_end", classify_head_callback(str(base_weights), label_of))
    try:
        model.train(data=str(data), epochs=epochs or options.epochs, imgsz=options.imgsz, batch=options.batch,
                    device=ultralytics_device(options.device), workers=0, project=str(work_dir), name=name,
                    exist_ok=True, seed=0, deterministic=True, plots=validate, verbose=False, val=validate,
                    amp=options.device != "cpu", patience=0)
    except (MemoryError, torch.cuda.OutOfMemoryError) as exc:
        raise OutOfMemory(f"out of memory while training ({type(exc).__name__}): lower TRAIN_BATCH or TRAIN_IMGSZ") from None
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise OutOfMemory(f"out of memory while training: lower TRAIN_BATCH or TRAIN_IMGSZ ({str(exc)[:200]})") from None
        raise
    weights = work_dir / name / "weights"
    kept = weights / "best.pt" if validate and (weights / "best.pt").is_file() else weights / "last.pt"
    return Trained(kept, best["epoch"] if validate else len(history), history, work_dir / name)


def all_pictures(data: Path, task: str, into: Path) -> Path:
    """The dataset with every picture in its train split (val stays as it is): what the final model of
    a small project learns from once the val split has chosen its epochs. Returns the data.yaml
    (classification: the folder)."""
    if task == "classify":
        for split, sources in (("train", ("train", "val")), ("val", ("val",))):
            for source in sources:
                for image in (data / source).glob("*/*"):
                    if image.is_file():
                        _link(image, into / split / image.parent.name / f"{source}-{image.name}")
        return into
    record = yaml.safe_load(data.read_text())
    record["train"] = [record["train"], record["val"]]
    target = into / "data.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    return target


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def score(weights: Path, data_yaml: Path, task: str, label_of: Callable[[str], str | None], work_dir: Path,
          options: TrainOptions) -> Score:
    """The val split's figure for the task (backend/training/tasks.py METRICS): mAP50-95 of masks (segment),
    keypoints (pose), rotated boxes (obb) or boxes (detect); top-1 accuracy for classify.

    The model's classes are matched to the dataset's through `label_of` (model class -> label, as
    serving maps them), so a model trained on other classes is scored on what it would serve: a class
    it cannot output scores 0."""
    from ultralytics import YOLO

    data = yaml.safe_load(data_yaml.read_text())
    classes = [str(data["names"][i]) for i in sorted(data["names"])]
    model = YOLO(str(weights))
    model_names = {int(i): str(name) for i, name in model.names.items()}
    to_model: dict[int, int] = {}
    for model_index, name in sorted(model_names.items()):
        label = label_of(name)
        if label in classes and classes.index(label) not in to_model:
            to_model[classes.index(label)] = model_index
    if task == "classify":
        return _top1(model, Path(data["path"]) / "val", classes, label_of, options)
    if task == "pose" and list(getattr(model.model, "kpt_shape", None) or []) != list(data["kpt_shape"]):
        return Score(0.0, f"{weights.name} has keypoints {getattr(model.model, 'kpt_shape', None)}, the dataset "
                          f"{data['kpt_shape']}")
    present = _classes_present(Path(data["path"]) / "labels" / "val")
    if not present:
        raise ValueError("the val split has no labelled objects")
    if not to_model.keys() & present:
        return Score(0.0, f"{weights.name} outputs none of the labels {', '.join(classes)}",
                     {classes[c]: 0.0 for c in sorted(present)})
    eval_root = work_dir / f"eval-{weights.stem}"
    eval_yaml = _remapped_val_split(Path(data["path"]), eval_root, to_model, model_names,
                                    {key: data[key] for key in ("kpt_shape", "flip_idx") if key in data})
    metrics = model.val(data=str(eval_yaml), split="val", imgsz=options.imgsz, batch=options.batch,
                        device=ultralytics_device(options.device), workers=0, plots=False, verbose=False,
                        project=str(work_dir), name=f"val-{weights.stem}", exist_ok=True)
    metric = getattr(metrics, {"segment": "seg", "pose": "pose"}.get(task, "box"), None) or metrics.box
    ap_by_model_class = dict(zip((int(c) for c in metric.ap_class_index), (float(a) for a in metric.ap)))
    per_class = {classes[c]: round(ap_by_model_class.get(to_model[c], 0.0) if c in to_model else 0.0, 4)
                 for c in sorted(present)}
    unknown = sorted(classes[c] for c in present if c not in to_model)
    note = f"matched {len(present) - len(unknown)} of {len(present)} val classes"
    shutil.rmtree(eval_root, ignore_errors=True)
    return Score(sum(per_class.values()) / len(present), note + (f" (cannot output: {', '.join(unknown)})" if unknown else ""),
                 per_class)


def _classes_present(labels_dir: Path) -> set[int]:
    present: set[int] = set()
    for label_file in labels_dir.rglob("*.txt"):
        for line in label_file.read_text().splitlines():
            if line.strip():
                present.add(int(line.split()[0]))
    return present


def _top1(model, val_dir: Path, classes: list[str], label_of: Callable[[str], str | None],  # noqa: ANN001 - YOLO
          options: TrainOptions) -> Score:
    """Share of val images whose served choice is right: the likeliest model class that has a label, as
    backend/prediction/classification.py chooses (a model class without a label is never served)."""
    samples = [(image, classes.index(folder.name)) for folder in sorted(val_dir.iterdir())
               if folder.is_dir() and folder.name in classes for image in sorted(folder.iterdir()) if image.is_file()]
    if not samples:
        raise ValueError("the val split has no images")
    labelled = {index: classes.index(label) for index, name in model.names.items()
                if (label := label_of(str(name))) in classes}
    if not labelled:
        return Score(0.0, f"{Path(model.ckpt_path or '').name} outputs none of the labels {', '.join(classes)}",
                     {classes[truth]: 0.0 for _, truth in samples})
    right, seen = [0] * len(classes), [0] * len(classes)
    for start in range(0, len(samples), max(options.batch, 1)):
        chunk = samples[start:start + max(options.batch, 1)]
        results = model.predict([str(path) for path, _ in chunk], imgsz=options.imgsz, verbose=False,
                                device=ultralytics_device(options.device))
        for result, (_, truth) in zip(results, chunk):
            probs = result.probs.data.cpu().numpy()
            best = max(labelled, key=lambda index: probs[int(index)])
            right[truth] += labelled[best] == truth
            seen[truth] += 1
    per_class = {classes[c]: round(right[c] / seen[c], 4) for c in range(len(classes)) if seen[c]}
    return Score(sum(right) / len(samples), f"top-1 on {len(samples)} val images, "
                                            f"{len(set(labelled.values()))} of {len(classes)} classes matched", per_class)


def _remapped_val_split(dataset_root: Path, eval_root: Path, to_model: dict[int, int], model_names: dict[int, str],
                        extra: dict) -> Path:
    """The val split with class ids in the model's numbering (objects of other classes left out: they
    count as missed through the class average in `score`)."""
    shutil.rmtree(eval_root, ignore_errors=True)
    for image in (dataset_root / "images" / "val").rglob("*"):
        if image.is_file():
            relative = image.relative_to(dataset_root / "images" / "val")
            _link(image, eval_root / "images" / "val" / relative)
            source_labels = (dataset_root / "labels" / "val" / relative).with_suffix(".txt")
            lines = []
            if source_labels.is_file():
                for line in source_labels.read_text().splitlines():
                    parts = line.split()
                    if parts and int(parts[0]) in to_model:
                        lines.append(" ".join([str(to_model[int(parts[0])])] + parts[1:]))
            label_target = (eval_root / "labels" / "val" / relative).with_suffix(".txt")
            label_target.parent.mkdir(parents=True, exist_ok=True)
            label_target.write_text("".join(line + "\n" for line in lines))
    eval_yaml = eval_root / "data.yaml"
    eval_yaml.write_text(yaml.safe_dump({"path": str(eval_root.resolve()), "train": "images/val", "val": "images/val",
                                         **extra, "names": model_names}, sort_keys=False, allow_unicode=True))
    return eval_yaml
