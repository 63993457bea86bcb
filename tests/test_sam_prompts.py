"""Label Studio's interactive context -> one SAM prompt in pixels of the decoded image."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from formats.label_config import parse_label_config
from backend.interactive.prompts import read_prompt
from tests.conftest import load_protocol_fixture

CONFIG = parse_label_config(
    "<View><Image name=\"image\" value=\"$image\"/><Image name=\"other\" value=\"$other\"/>"
    "<KeyPointLabels name=\"kp\" toName=\"image\" smart=\"true\"><Label value=\"cat\"/><Label value=\"dog\"/>"
    "</KeyPointLabels><RectangleLabels name=\"box\" toName=\"image\" smart=\"true\"><Label value=\"cat\"/>"
    "<Label value=\"dog\"/></RectangleLabels>"
    "<KeyPointLabels name=\"kp2\" toName=\"other\" smart=\"true\"><Label value=\"cat\"/></KeyPointLabels>"
    "</View>")


def point(x: float, y: float, label: str = "cat", positive: bool = True, from_name: str = "kp") -> dict:
    return {"type": "keypointlabels", "from_name": from_name, "to_name": "image", "is_positive": positive,
            "original_width": 1, "original_height": 1, "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def rectangle(x: float, y: float, w: float, h: float, label: str = "dog") -> dict:
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def test_percent_becomes_pixels_of_the_decoded_image_not_original_width() -> None:
    regions = read_prompt([point(50, 25), point(10, 90, positive=False)], CONFIG)
    prompt = regions.in_pixels(1280, 720)  # the context claims 1x1; the decoded image is what counts
    np.testing.assert_allclose(prompt.points, [[640, 180], [128, 648]])
    assert prompt.point_labels.tolist() == [1, 0]
    assert prompt.box is None and prompt.label == "cat" and not prompt.is_single_click
    assert (regions.to_name, regions.data_key) == ("image", "image")


def test_clicks_and_one_box_make_one_prompt_labeled_like_the_box() -> None:
    prompt = read_prompt([point(50, 50, "cat"), rectangle(10, 20, 50, 40, "dog")], CONFIG).in_pixels(200, 100)
    np.testing.assert_allclose(prompt.box, [20, 20, 120, 60])
    assert prompt.label == "dog" and len(prompt.points) == 1 and not prompt.is_single_click


def test_label_is_the_first_positive_click_even_after_a_negative_one() -> None:
    prompt = read_prompt([point(5, 5, "dog", positive=False), point(50, 50, "cat")], CONFIG).in_pixels(100, 100)
    assert prompt.label == "cat"


def test_a_single_click_asks_for_multimask() -> None:
    assert read_prompt([point(50, 50)], CONFIG).in_pixels(10, 10).is_single_click


def test_clicks_outside_the_image_are_clamped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        prompt = read_prompt([point(130, -10)], CONFIG).in_pixels(200, 100)
    np.testing.assert_allclose(prompt.points, [[200, 0]])
    assert "outside the 200x100 image" in caplog.text


def test_a_box_entirely_outside_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        prompt = read_prompt([point(50, 50), rectangle(120, 10, 30, 30)], CONFIG).in_pixels(100, 100)
    assert prompt.box is None and len(prompt.points) == 1
    assert "outside" in caplog.text
    assert read_prompt([rectangle(120, 10, 30, 30)], CONFIG).in_pixels(100, 100) is None


def test_unknown_and_broken_prompts_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    regions = [
        {"type": "ellipselabels", "from_name": "kp", "to_name": "image", "value": {"x": 1, "y": 1}},
        point(float("nan"), 10),
        {**point(10, 10), "from_name": "not-in-config"},
        {**point(10, 10), "value": {"x": "10", "y": 10, "keypointlabels": ["cat"]}},
        "not a region",
        point(40, 60, "dog"),
    ]
    with caplog.at_level(logging.WARNING):
        prompt = read_prompt(regions, CONFIG).in_pixels(100, 100)
    np.testing.assert_allclose(prompt.points, [[40, 60]])
    assert prompt.label == "dog"
    assert "'ellipselabels'" in caplog.text and "not-in-config" in caplog.text
    assert read_prompt([regions[0]], CONFIG) is None


def test_only_the_first_prompted_image_counts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        regions = read_prompt([point(10, 10), {**point(90, 90), "from_name": "kp2", "to_name": "other"}], CONFIG)
    assert len(regions.points) == 1 and regions.to_name == "image"
    assert "on image 'other'" in caplog.text


def test_several_rectangles_use_the_last(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        prompt = read_prompt([rectangle(0, 0, 10, 10, "cat"), rectangle(50, 50, 10, 10, "dog")], CONFIG).in_pixels(100, 100)
    np.testing.assert_allclose(prompt.box, [50, 50, 60, 60])
    assert prompt.label == "dog" and "using the last" in caplog.text


@pytest.mark.parametrize("name", ["predict-interactive-points.json", "predict-interactive-rectangle.json"])
def test_captured_label_studio_contexts(name: str) -> None:
    request = load_protocol_fixture(name)
    regions = read_prompt(request["params"]["context"]["result"], parse_label_config(request["label_config"]))
    prompt = regions.in_pixels(810, 1080)
    assert prompt.label == "bus" and regions.data_key == "image"
    if "points" in name:
        np.testing.assert_allclose(prompt.points, [[0.405 * 810, 0.552 * 1080], [0.2 * 810, 0.8 * 1080]])
        assert prompt.point_labels.tolist() == [1, 0]
    else:
        np.testing.assert_allclose(prompt.box, [0.05 * 810, 0.2 * 1080, 0.95 * 810, 0.75 * 1080])
