"""Which control tags want what: labels, predicted_values, model_path, thresholds, model_skip."""

from __future__ import annotations

import re

import pytest

from formats.label_config import LabelConfigError, parse_label_config
from tests.conftest import REPO_ROOT, config_xml, load_protocol_fixture


def test_captured_config_controls() -> None:
    config = parse_label_config(load_protocol_fixture("setup.json")["schema"])
    assert [(c.name, c.tag, c.smart) for c in config.controls] == [
        ("keypoint", "KeyPointLabels", True), ("rect", "RectangleLabels", True),
        ("polygon", "PolygonLabels", False), ("brush", "BrushLabels", False)]
    assert [c.name for c in config.prediction_controls] == ["rect", "polygon", "brush"]
    assert all(c.data_key == "image" and c.to_name == "image" for c in config.controls)


def test_attributes_from_the_humansignal_backend() -> None:
    config = parse_label_config(config_xml(
        '<RectangleLabels name="r" toName="image" model_path="det.pt" model_score_threshold="0.42">'
        '<Label value="Car" predicted_values="car,truck"/><Label value="Person"/></RectangleLabels>',
        '<PolygonLabels name="p" toName="image" model_skip="true"><Label value="x"/></PolygonLabels>'))
    rect = config.control("r")
    assert rect.model_path == "det.pt" and rect.score_threshold == 0.42
    assert rect.label_for("truck") == "Car" and rect.label_for("CAR") == "Car"
    assert rect.label_for("person") == "Person" and rect.label_for("dog") is None
    assert config.control("p").skip and [c.name for c in config.prediction_controls] == ["r"]


@pytest.mark.parametrize("xml,message", [
    ("", "empty"),
    ("<View><Image name='i' value='$image'>", "not valid XML"),
    (config_xml('<RectangleLabels name="r" toName="image" model_score_threshold="lots"><Label value="a"/></RectangleLabels>'), "not a number"),
    (config_xml('<RectangleLabels name="r" toName="image" model_score_threshold="2"><Label value="a"/></RectangleLabels>'), "between 0 and 1"),
])
def test_bad_configs_are_explained(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_controls_not_on_an_image_are_ignored() -> None:
    config = parse_label_config('<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="a"/></Labels></View>')
    assert config.controls == ()


def lower_case_names(xml: str) -> str:
    """The config as Label Studio's editor reads it: every tag and attribute name in lower case."""
    return re.sub(r"<(/?)([A-Za-z]+)|\s([A-Za-z_]+)=", lambda m: (f"<{m[1]}{m[2].lower()}" if m[2] else f" {m[3].lower()}="), xml)


@pytest.mark.parametrize("config_file", ["demo-shapes-video.xml", "demo-shapes-pose.xml", "demo-shapes-taxonomy.xml"])
def test_tag_and_attribute_names_are_read_in_any_case(config_file: str) -> None:
    xml = (REPO_ROOT / "label_configs" / config_file).read_text()
    lower = lower_case_names(xml)
    assert "toName" not in lower and "<view>" in lower
    assert parse_label_config(lower) == parse_label_config(xml)
    assert parse_label_config(lower).controls
