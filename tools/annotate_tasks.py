"""annotate_dir for pose, OBB and classification: the labeling config a model gets, and the files
beyond COCO instances that a config's controls produce.

A model given with --model gets a config of its task (`task_label_config`): a pose model a KeyPointLabels
with one label per class and keypoint (`model_point_threshold` 0.5) and a RectangleLabels its boxes go to;
an OBB model a RectangleLabels with `model_obb="true"`; a classification model a single Choices. With
--label_config the config is the user's. Then (`TaskOutputs`):

- rectangles (rotated ones too), polygons and brushes go to COCO instances as before: a rotated box as
  the axis-aligned `bbox` around it and its 4 corners as the `segmentation` polygon (DOTA-like), `area`
  the rotated box's;
- KeyPointLabels objects go to COCO keypoints, `annotations/person_keypoints_default.json` (formats.coco_keypoints);
- Choices and Taxonomy to `annotations/classification_default.{json,csv}` (formats.class_labels).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from xml.sax.saxutils import quoteattr

from formats.label_config import Control, LabelConfig
from backend.models.cache import ModelPathError
from backend.models.yolo_tasks import TaskYoloModel
from backend.prediction.predictor import PredictionConfigError
from backend.training.model_choice import ModelChoice, model_choice
from backend.settings import Settings
from tools.annotate_options import AnnotateError, label_config_xml
from formats.class_labels import CLASS_TAGS, ClassLabelsWriter
from formats.coco import CocoWriter
from formats.coco_keypoints import KeypointDecoder, coco_keypoint_categories, pose_categories

TASK_MODEL_TASKS = ("pose", "obb", "classify")
KEYPOINTS_NAME = "person_keypoints_default.json"
POINT_THRESHOLD = 0.5  # model_point_threshold of the config made for a pose model
INSTANCE_TYPES = ("rectanglelabels", "polygonlabels", "brushlabels")


def load_model(services, path_value: str, setting: str):  # noqa: ANN001, ANN201 - backend Services, a YOLO model
    """The model of any YOLO task: detection/segmentation as the predictor loads them, else pose/OBB/classification."""
    try:
        return services.yolo.get(ModelChoice(path_value, setting))
    except ModelPathError as exc:
        try:
            model = services.yolo.get(ModelChoice(path_value, setting, task_model=True))
        except ModelPathError:
            raise exc from None
        if model.task not in TASK_MODEL_TASKS:
            raise exc from None
        return model


def _labels(values: list[str], **attributes: str) -> str:
    extra = "".join(f" {key}={quoteattr(value)}" for key, value in attributes.items())
    return "".join(f"<Label value={quoteattr(value)}{extra}/>" for value in values)


def keypoint_label(class_name: str, keypoint: str, several_classes: bool) -> str:
    """The label of a class's keypoint in the config made for a pose model: the keypoint's name, with
    the class in front where several classes or unnamed keypoints ("0", "1", ...) need it."""
    return f"{class_name} {keypoint}" if several_classes or keypoint.isdigit() else keypoint


def task_label_config(model: TaskYoloModel) -> str:
    """The labeling config that gets all of a pose, OBB or classification model's output."""
    classes = list(model.class_names)
    image = '<Image name="image" value="$image"/>'
    if model.task == "obb":
        return f'<View>{image}<RectangleLabels name="label" toName="image" model_obb="true">{_labels(classes)}</RectangleLabels></View>'
    if model.task == "classify":
        choices = "".join(f"<Choice value={quoteattr(name)}/>" for name in classes)
        return f'<View>{image}<Choices name="class" toName="image" choice="single">{choices}</Choices></View>'
    names = model.keypoint_names
    if not names:
        raise PredictionConfigError(f"'{model.path.name}' does not say how many keypoints it has (an export without "
                                    "Ultralytics' metadata): give a labeling config with --label_config")
    points = ""
    for class_name in classes:
        for index, keypoint in enumerate(names.get(class_name, ())):
            label = keypoint_label(class_name, keypoint, len(classes) > 1)
            points += _labels([label], predicted_values=class_name, model_index=str(index))
    return (f'<View>{image}<RectangleLabels name="box" toName="image" model_skip="true">{_labels(classes)}</RectangleLabels>'
            f'<KeyPointLabels name="keypoints" toName="image" model_point_threshold="{POINT_THRESHOLD}">{points}'
            '</KeyPointLabels></View>')


def read_label_config(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnnotateError(f"cannot read --label_config '{path}': {exc.strerror or exc}") from None


def model_label_config(services, settings: Settings, shape: str | None) -> str:  # noqa: ANN001 - backend Services
    """The labeling config made for --model (the settings' YOLO_SEG_MODEL): a control of `shape` for a
    detection or segmentation model, the controls of its task for a pose, OBB or classification model."""
    model = load_model(services, settings.yolo_seg_model, "--model")
    if model.task in TASK_MODEL_TASKS:
        if shape:
            raise AnnotateError(f"--shape is for detection and segmentation models; '{settings.yolo_seg_model}' is a "
                                f"YOLO {model.task} model")
        return task_label_config(model)
    shape = shape or ("polygons" if model.has_masks or settings.yolo_sam else "boxes")
    if shape != "boxes" and not (model.has_masks or settings.yolo_sam):
        raise AnnotateError(f"'{settings.yolo_seg_model}' is a detection model: use --shape boxes, a segmentation model, or --sam")
    return label_config_xml(list(model.class_names), shape)


class TaskOutputs:
    """The keypoints and classification files of one run, fed one predicted task at a time."""

    def __init__(self, config: LabelConfig, services, settings: Settings, work_dir: Path,  # noqa: ANN001 - backend Services
                 named_by_config: bool) -> None:
        controls = config.prediction_controls
        keypoint_controls = [c for c in controls if c.tag == "KeyPointLabels"]
        self._keypoints: KeypointDecoder | None = None
        if keypoint_controls:
            names: dict[str, tuple[str, ...]] = {}
            for control in keypoint_controls:
                model = services.yolo.get(model_choice(control, settings))  # a pose model: annotate checked the plan
                for class_name, keypoints in _keypoint_names(control, model).items():
                    names.setdefault(class_name, keypoints)
            categories = pose_categories(names, keypoint_controls if named_by_config else ())
            self._keypoints = KeypointDecoder(categories, keypoint_controls)
            self._keypoint_categories = coco_keypoint_categories(categories)
            self._keypoint_coco = CocoWriter(work_dir / "keypoints")
        self._classes = ClassLabelsWriter(controls, work_dir) if any(c.tag in CLASS_TAGS for c in controls) else None
        self.counts: Counter[str] = Counter()  # converted outputs by kind, for the run's summary

    def add(self, task: dict, file_name: str, size: tuple[int, int]) -> dict:
        """Record the task's keypoints and classes; the task with only the regions COCO instances take."""
        (prediction,) = task["predictions"]
        regions = prediction["result"]
        if self._keypoints is not None:
            image_id = self._keypoint_coco.n_images + 1
            self._keypoint_coco.add_image({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
            for annotation in self._keypoints.annotations(regions, image_id, self._keypoint_coco.n_annotations + 1):
                self._keypoint_coco.add_annotation(annotation)
                self.counts["keypoint object"] += 1
        if self._classes is not None:
            self.counts["image class"] += self._classes.add(file_name, *size, regions)
        instances = [r for r in regions if r.get("type") in INSTANCE_TYPES]
        return {**task, "predictions": [{**prediction, "result": instances}]}

    def write(self, annotations_dir: Path, info: dict) -> list[Path]:
        written = []
        if self._keypoints is not None:
            self._keypoint_coco.write(annotations_dir / KEYPOINTS_NAME, self._keypoint_categories, info)
            written.append(annotations_dir / KEYPOINTS_NAME)
        if self._classes is not None:
            written += self._classes.write(annotations_dir, info)
        return written


def _keypoint_names(control: Control, model: TaskYoloModel) -> dict[str, tuple[str, ...]]:
    """The model's keypoint names by class; for a model that does not say, "0", "1", ... up to the highest
    `model_index` the control names."""
    if model.keypoint_names:
        return model.keypoint_names
    count = 1 + max((keypoint.index for keypoint in control.options.keypoints), default=-1)
    return {class_name: tuple(str(i) for i in range(count)) for class_name in model.class_names}
