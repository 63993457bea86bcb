"""The backend's models as a CVAT auto-annotation function (cvat-sdk's detection function protocol).

    cvat-cli --server-host URL task auto-annotate TASK_ID --function-module tools.cvat_function \\
        -p model_root=str:./models -p yolo_seg_model=str:yolov8n-seg.pt -p shape=str:masks

cvat-cli passes the `-p NAME=TYPE:VALUE` parameters to `create(**parameters)`: the backend's
settings (the README's `--with` keys), `config` (a TOML file of them, as `annotate_dir --config`),
`model` (a .pt file, or a name in MODEL_ROOT) and `shape` (boxes, polygons or masks). Every frame
goes through the backend's own batch predictor with a labeling config made of the model's class
names, and each Label Studio region it answers becomes a CVAT shape through formats.geometry:
rectangles (rotated for OBB models), polygons, masks, and skeletons from a pose model's keypoints.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import uuid
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import PIL.Image
from cvat_sdk import models

from formats.geometry import ls_rect_to_cvat_rectangle, mask_to_cvat_rle, percent_to_pixels
from formats.rle import ls_rle_to_mask
from formats.label_config import LabelConfig, parse_label_config
from backend.settings import Settings
from tools.annotate_options import (SHAPE_TAGS, AnnotateError, AnnotateOptions, annotate_settings, label_config_xml,
                                    load_toml_settings, local_files_url)

try:  # cvat-cli reports a CriticalError as one line and exits 1; any other exception is a traceback
    from cvat_cli._internal.common import CriticalError
except ImportError:  # the SDK alone (cvat-sdk without cvat-cli)
    _ERROR_BASES: tuple[type[Exception], ...] = (ValueError,)
else:
    _ERROR_BASES = (ValueError, CriticalError)

CVAT_LABEL_TYPES = {"boxes": "rectangle", "polygons": "polygon", "masks": "mask"}
FUNCTION_PARAMETERS = ("config", "model", "shape")  # the -p keys that are not backend settings
SHAPE_TASKS = ("detect", "segment", "obb", "pose")  # YOLO tasks whose regions CVAT rectangles, polygons and masks hold
MODEL_SETTINGS = ("yolo_det_model", "yolo_seg_model", "yolo_obb_model", "yolo_pose_model")  # settings that may name the answering model

logger = logging.getLogger(__name__)


class CvatFunctionError(*_ERROR_BASES):
    """Bad parameters or models for the function; the message says what to change."""


class BackendDetectionFunction:
    """A CVAT detection function answering with the backend's predictions for one model and shape."""

    def __init__(self, services: Any, class_names: list[str], shape: str, frames: tempfile.TemporaryDirectory,
                 rotated: bool = False) -> None:
        self.shape = shape
        self.rotated = rotated  # an OBB model: rotated rectangles
        self._services = services  # backend.serving.services.Services whose LOCAL_FILES_DOCUMENT_ROOT is `frames`
        self._class_names = class_names
        self._label_ids = {name: index for index, name in enumerate(class_names)}
        self._frames = frames  # removed with the function

    @cached_property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        label_type = CVAT_LABEL_TYPES[self.shape]
        return cvataa.DetectionFunctionSpec(labels=[
            cvataa.label_spec(name, label_id, type=label_type) for name, label_id in self._label_ids.items()])

    def label_config(self, shape: str, conf_threshold: float | None = None) -> LabelConfig:
        """The labeling config the backend answers for `shape` (`model_obb` for an OBB model); a threshold
        replaces MODEL_SCORE_THRESHOLD."""
        config = parse_label_config(self._config_xml(shape))
        controls = config.controls
        if self.rotated:
            controls = tuple(dataclasses.replace(c, options=dataclasses.replace(c.options, obb=True)) for c in controls)
        if conf_threshold is not None:
            controls = tuple(dataclasses.replace(control, score_threshold=conf_threshold) for control in controls)
        return dataclasses.replace(config, controls=controls)

    def detect(self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image) -> list[models.LabeledShapeRequest]:
        shape = "polygons" if self.shape == "masks" and context.conv_mask_to_poly else self.shape
        config = self.label_config(shape, context.conf_threshold)
        # The frame reaches the predictor as the backend reads any image: a Local Storage file.
        frame = Path(self._frames.name) / f"{uuid.uuid4().hex}.bmp"
        image.convert("RGB").save(frame)
        try:
            task = {"id": context.frame_name, "data": {"image": local_files_url(frame.name)}}
            [prediction] = self._services.predictor.predict([task], config, None, model_version="")
        finally:
            frame.unlink(missing_ok=True)
        if not prediction:  # the frame was not predicted: the backend's warning line says why
            raise RuntimeError(f"frame {context.frame_name} could not be predicted; see the warning in the log")
        return self.shapes(prediction["result"])

    def shapes(self, regions: list[dict]) -> list[models.LabeledShapeRequest]:
        """The CVAT shapes of one frame's Label Studio regions."""
        return [region_shape(region, self._label_ids) for region in regions]

    def _config_xml(self, shape: str) -> str:
        return label_config_xml(self._class_names, shape)


class SkeletonFunction(BackendDetectionFunction):
    """A pose model's objects as CVAT skeletons: one skeleton label per class, one point sublabel per keypoint."""

    def __init__(self, services: Any, class_names: list[str], keypoint_names: Mapping[int, list[str]],
                 frames: tempfile.TemporaryDirectory) -> None:
        super().__init__(services, class_names, "skeletons", frames)
        self._keypoint_names = keypoint_names  # class index -> its keypoints' names, in the model's order
        # The labeling config's keypoint labels: "<class> <keypoint>" -> (class index, keypoint index).
        self._keypoint_labels = {f"{name} {keypoint}": (class_id, index) for class_id, name in enumerate(class_names)
                                 for index, keypoint in enumerate(keypoint_names[class_id])}

    @cached_property
    def spec(self) -> cvataa.DetectionFunctionSpec:
        return cvataa.DetectionFunctionSpec(labels=[
            cvataa.skeleton_label_spec(name, class_id, [cvataa.keypoint_spec(keypoint, index) for index, keypoint
                                                         in enumerate(self._keypoint_names[class_id])])
            for name, class_id in self._label_ids.items()])

    def _config_xml(self, shape: str) -> str:
        labels = "".join(f'<Label value={quoteattr(label)} model_index="{index}" predicted_values={quoteattr(self._class_names[class_id])}/>'
                         for label, (class_id, index) in self._keypoint_labels.items())
        return f'<View><Image name="image" value="$image"/><KeyPointLabels name="label" toName="image">{labels}</KeyPointLabels></View>'

    def shapes(self, regions: list[dict]) -> list[models.LabeledShapeRequest]:
        """Keypoint regions grouped into objects (an object's later keypoints carry its first one's id as
        `parentID`); a keypoint the backend left out is an `outside` point of the skeleton."""
        objects: dict[str, tuple[int, dict[int, list[float]]]] = {}
        for region in regions:
            value = region["value"]
            class_id, index = self._keypoint_labels[value["keypointlabels"][0]]
            point = percent_to_pixels(np.array([[value["x"], value["y"]]]), region["original_width"],
                                      region["original_height"])[0].tolist()
            objects.setdefault(region.get("parentID") or region["id"], (class_id, {}))[1][index] = point
        return [cvataa.skeleton(class_id, [
                    cvataa.keypoint(index, points.get(index, [0.0, 0.0]), outside=index not in points)
                    for index in range(len(self._keypoint_names[class_id]))])
                for class_id, points in objects.values()]


def region_shape(region: Mapping[str, Any], label_ids: Mapping[str, int]) -> models.LabeledShapeRequest:
    """A Label Studio rectangle, polygon or brush region -> the CVAT shape of the same pixels."""
    value, kind = region["value"], region["type"]
    width, height = region["original_width"], region["original_height"]
    label_id = label_ids[value[kind][0]]
    if kind == "rectanglelabels":
        points, rotation = ls_rect_to_cvat_rectangle(value, width, height)
        return cvataa.rectangle(label_id, points, rotation=rotation)
    if kind == "polygonlabels":
        return cvataa.polygon(label_id, percent_to_pixels(np.asarray(value["points"]), width, height).ravel().tolist())
    if kind == "brushlabels":
        return cvataa.mask(label_id, mask_to_cvat_rle(ls_rle_to_mask(value["rle"], width, height)))
    raise ValueError(f"no CVAT shape for a Label Studio '{kind}' region")


def create(**parameters: Any) -> BackendDetectionFunction:
    """The function for cvat-cli's `-p` parameters; raises CvatFunctionError with one sentence on bad usage."""
    from backend.models.cache import ModelPathError
    from backend.training.model_choice import ModelChoice
    from backend.serving.services import build_services
    from backend.settings import SettingsError

    shape = parameters.get("shape")
    if shape is not None and shape not in SHAPE_TAGS:
        raise CvatFunctionError(f"-p shape must be {', '.join(SHAPE_TAGS)}, not '{shape}'")
    settings_values = _settings_values(parameters)
    # One model answers: `model`, the one named alone, else the detection model for boxes, the segmentation model.
    named = [key for key in MODEL_SETTINGS if key in settings_values]
    alone = named[0] if len(named) == 1 and not parameters.get("model") else None
    use_det_model = alone == "yolo_det_model" or (alone is None and shape == "boxes")
    frames = tempfile.TemporaryDirectory(prefix="cvat-frames-")  # where the predictor reads each frame from
    options = AnnotateOptions(Path(frames.name), model=parameters.get("model"),
                              shape="boxes" if use_det_model else None, overrides=tuple(settings_values.items()))
    try:
        settings = annotate_settings(options, dict(os.environ))
        setting = alone if alone in ("yolo_obb_model", "yolo_pose_model") else "yolo_det_model" if use_det_model else "yolo_seg_model"
        model_value = getattr(settings, setting)
        # The model serves every control the function's labeling config may have.
        settings = dataclasses.replace(settings, **{key: model_value for key in MODEL_SETTINGS})
        services = build_services(settings)
        model = _answering_model(services, ModelChoice(model_value, "-p model" if parameters.get("model") else setting.upper()))
    except (AnnotateError, ModelPathError, SettingsError, ImportError, OSError) as exc:
        raise CvatFunctionError(str(exc)) from None
    return _function_for(model, shape, services, frames)


def _function_for(model: Any, shape: str | None, services: Any, frames: tempfile.TemporaryDirectory) -> BackendDetectionFunction:
    """The function answering with `model` (a loaded backend YOLO model) in `shape`, or the sentence why it cannot."""
    if model.task not in SHAPE_TASKS:
        raise CvatFunctionError(f"'{model.path.name}' is a YOLO '{model.task}' model, whose results this function cannot "
                                "give as CVAT shapes: use a detection, segmentation, OBB or pose model")
    if model.task == "pose":
        if shape is not None:
            raise CvatFunctionError(f"'{model.path.name}' is a pose model, which answers CVAT skeletons: leave out -p shape")
        logger.info("CVAT function: %s answers skeletons (%s)", model.path.name, ", ".join(model.class_names))
        return SkeletonFunction(services, list(model.class_names), _keypoint_names(model.path), frames)
    if model.task == "obb":
        if shape not in (None, "boxes"):
            raise CvatFunctionError(f"'{model.path.name}' is an OBB model, which answers rotated rectangles: use -p shape=str:boxes")
        logger.info("CVAT function: %s answers rotated rectangles (%s)", model.path.name, ", ".join(model.class_names))
        return BackendDetectionFunction(services, list(model.class_names), "boxes", frames, rotated=True)
    segments_boxes = services.settings.yolo_sam and services.interactive is not None
    shape = shape or ("polygons" if model.has_masks or segments_boxes else "boxes")
    if shape != "boxes" and not (model.has_masks or segments_boxes):
        raise CvatFunctionError(
            f"'{model.path.name}' is a detection model: use -p shape=str:boxes, a segmentation model, or SAM masks "
            "for its boxes (-p yolo_sam=bool:true -p model_name=str:sam -p sam_checkpoint_file=str:FILE)")
    logger.info("CVAT function: %s answers %s (%s)", model.path.name, shape, ", ".join(model.class_names))
    return BackendDetectionFunction(services, list(model.class_names), shape, frames)


def _keypoint_names(path: Path) -> dict[int, list[str]]:
    """A pose model's keypoint names per class index (Ultralytics' `kpt_names`, else 1, 2, ... as CVAT names them)."""
    from ultralytics import YOLO

    network = YOLO(str(path)).model
    if not hasattr(network, "kpt_shape"):  # an export (.onnx, OpenVINO...) holds the network elsewhere
        raise CvatFunctionError(f"'{path.name}': the keypoints of an exported pose model are not known here; use its .pt file")
    count = int(network.kpt_shape[0])
    names = getattr(network, "kpt_names", None) or {}
    return {class_id: [str(name) for name in names.get(class_id, [])] or [str(k + 1) for k in range(count)]
            for class_id in network.names}


def _answering_model(services: Any, choice: Any) -> Any:
    """The YOLO model of `choice` (backend.prediction.predictor.ModelChoice), of any task the backend loads."""
    from backend.models.cache import ModelPathError

    try:
        return services.yolo.get(choice)  # detection and segmentation
    except ModelPathError as refused:
        if not services.yolo.path(choice).is_file():
            raise
        try:
            return services.yolo.get(dataclasses.replace(choice, task_model=True))  # OBB, pose, classification
        except ModelPathError:
            raise refused from None


def _settings_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The backend settings the parameters give: the `config` TOML file's, then the other `-p` keys."""
    known = {field.name for field in dataclasses.fields(Settings)}
    unknown = sorted(key for key in parameters if key not in known and key not in FUNCTION_PARAMETERS)
    if unknown:
        raise CvatFunctionError(
            f"unknown -p parameter '{unknown[0]}': use {', '.join(FUNCTION_PARAMETERS)} or a backend setting "
            "(the README's `--with` keys, e.g. model_root, yolo_seg_model, model_score_threshold, yolo_sam)")
    values: dict[str, Any] = {}
    if parameters.get("config"):
        try:
            values.update(load_toml_settings(Path(parameters["config"])))
        except AnnotateError as exc:
            raise CvatFunctionError(str(exc).replace("--config", "-p config")) from None
    values.update((key, value) for key, value in parameters.items() if key not in FUNCTION_PARAMETERS)
    return values
