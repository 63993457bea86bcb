"""tools.annotate_dir --ray: the same COCO file and Label Studio tasks as in one process, the
unreadable file reported the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DEMO_SEG, MODELS_DIR
from tests.test_tools_annotate_dir import images_dir  # noqa: F401 - fixture
from tools.annotate_dir import annotate
from tools.annotate_options import AnnotateOptions

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_ray_gives_the_same_dataset_as_one_process(images_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        outputs = {}
        for name, ray_address in (("local", None), ("ray", "local")):
            options = AnnotateOptions(images_dir, out_dir=tmp_path / name, model=str(MODELS_DIR / DEMO_SEG),
                                      shape="polygons", ls_tasks=tmp_path / f"{name}.json", batch=2, ray=ray_address,
                                      overrides=(("model_score_threshold", "0.25"), ("cache_dir", str(tmp_path / name))))
            summary = annotate(options, environ={})
            assert summary.tasks_skipped == {"unreadable image": 1} and "broken.jpg" in summary.report()
            outputs[name] = (json.loads((tmp_path / name / "annotations" / "instances_default.json").read_text()),
                             json.loads((tmp_path / f"{name}.json").read_text()))
    finally:
        ray.shutdown()

    (coco, tasks), (ray_coco, ray_tasks) = outputs["local"], outputs["ray"]
    assert ray_coco["images"] == coco["images"] and ray_coco["categories"] == coco["categories"]
    assert [(a["image_id"], a["category_id"]) for a in ray_coco["annotations"]] == \
        [(a["image_id"], a["category_id"]) for a in coco["annotations"]]
    for ours, theirs in zip(ray_coco["annotations"], coco["annotations"]):
        assert ours["bbox"] == pytest.approx(theirs["bbox"], abs=0.5)
    assert [t["data"] for t in ray_tasks] == [t["data"] for t in tasks]
    assert [t["predictions"][0]["model_version"] for t in ray_tasks] == [t["predictions"][0]["model_version"] for t in tasks]
