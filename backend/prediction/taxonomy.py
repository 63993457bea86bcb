"""Taxonomy with a YOLO classification model: the node (or nodes, with choice="multiple") a class becomes,
as Label Studio stores a taxonomy selection, each node by its path from the root:
`{"taxonomy": [["Animal", "Cat"], ...]}`.

The tree comes from the config's nested <Choice> tags (`formats.control_options.taxonomy_nodes`): a
class becomes the first node, in config order, whose value or `predicted_values` names it; every leaf
can be chosen, and inner nodes that carry `predicted_values` (unless leafsOnly="true").
"""

from __future__ import annotations

from backend.prediction.classification import chosen_labels, whole_image_region
from formats.label_config import Control
from backend.models.yolo_tasks import ClassProbabilities


def taxonomy_regions(control: Control, found: ClassProbabilities, threshold: float) -> list[dict]:
    """At most one `taxonomy` region: the chosen nodes' paths, scored as Choices are (`chosen_labels`)."""
    labels, score = chosen_labels(control, found, threshold)
    paths = {"/".join(path): list(path) for path in reversed(control.options.taxonomy)}  # the first path wins
    return [whole_image_region(control, {"taxonomy": [paths[label] for label in labels]}, score)] if labels else []
