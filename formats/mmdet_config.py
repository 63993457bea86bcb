"""MMDetection 3.x training configs for a converted dataset (`--out_config` of the converter).

They inherit MMDetection's own model configs (`mmdet::...`, resolved by MMEngine from the
installed mmdet package) and replace only the dataset, the classes and the head sizes.
The dataset has no split, so it serves for training and validation alike, as in OpenMMLab's
label_anything script.
"""

from __future__ import annotations

from pathlib import Path

# name -> (base config inside mmdet, the `model` override setting num_classes, COCO-pretrained weights)
MODELS = {
    "mask-rcnn_r50_fpn": (
        "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
        "model = dict(roi_head=dict(bbox_head=dict(num_classes=num_classes), mask_head=dict(num_classes=num_classes)))",
        "https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/"
        "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth",
    ),
    "rtmdet-ins_s": (
        "rtmdet/rtmdet-ins_s_8xb32-300e_coco.py",
        "model = dict(bbox_head=dict(num_classes=num_classes))",
        None,
    ),
}


def mmdet_config(model: str, data_root: Path, ann_file: str, image_prefix: str, classes: list[str]) -> str:
    base, head, weights = MODELS[model]
    root = str(data_root.resolve()).rstrip("/") + "/"
    dataset = "dict(data_root=data_root, metainfo=metainfo, ann_file=ann_file, data_prefix=dict(img=image_prefix))"
    lines = [
        f"# MMDetection config for the Label Studio export in {root} (written by convert_to_rle_mask_coco)",
        f"_base_ = 'mmdet::{base}'",
        "",
        f"data_root = {root!r}",
        f"ann_file = {ann_file!r}",
        f"image_prefix = {image_prefix!r}",
        f"class_name = {tuple(classes)!r}",
        "num_classes = len(class_name)",
        "metainfo = dict(classes=class_name)",
        "",
        head,
        f"train_dataloader = dict(dataset={dataset})",
        f"val_dataloader = dict(dataset={dataset})",
        "test_dataloader = val_dataloader",
        "val_evaluator = dict(ann_file=data_root + ann_file)",
        "test_evaluator = val_evaluator",
    ]
    if weights:
        lines.append(f"load_from = {weights!r}")
    return "\n".join(lines) + "\n"
