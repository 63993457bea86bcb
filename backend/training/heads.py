"""A classification model's last layer, lined up with the dataset's classes before fine-tuning.

Ultralytics keeps the base model's head when the class count matches, so dataset class i would start
from whatever base class i was: with Choices named in another order (or other names) the model
starts confidently wrong. Here row i of the head starts from the base model's class that serves
label i (`label_of`, as serving maps classes to Choices), and from a fresh initialisation when no
base class maps to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn


def aligned_rows(base_names: Mapping[int, str], dataset_names: Sequence[str],
                 label_of: Callable[[str], str | None]) -> list[int | None]:
    """For each dataset class, the base model's class index that serves it, or None."""
    sources: list[int | None] = []
    for name in dataset_names:
        sources.append(next((int(index) for index, base in sorted(base_names.items()) if label_of(str(base)) == name),
                            None))
    return sources


def align_classify_head(head: nn.Linear, base_head: nn.Linear, sources: Sequence[int | None]) -> None:
    """Rewrite `head` (one row per dataset class) from `base_head`'s rows; rows without a source are re-initialised."""
    fresh = nn.Linear(head.in_features, head.out_features).to(head.weight.device, head.weight.dtype)
    with torch.no_grad():
        for row, source in enumerate(sources):
            if source is not None and source < base_head.out_features and base_head.in_features == head.in_features:
                head.weight[row] = base_head.weight[source].to(head.weight)
                head.bias[row] = base_head.bias[source].to(head.bias)
            else:
                head.weight[row] = fresh.weight[row]
                head.bias[row] = fresh.bias[row]


def classify_head_callback(base_weights: str, label_of: Callable[[str], str | None]):  # noqa: ANN201
    """An Ultralytics `on_pretrain_routine_end` callback aligning the model's (and its EMA's) head."""

    def align(trainer) -> None:  # noqa: ANN001 - Ultralytics' trainer
        from ultralytics import YOLO
        from ultralytics.utils.torch_utils import unwrap_model

        base = YOLO(base_weights)
        base_head = base.model.model[-1].linear
        dataset_names = [trainer.data["names"][i] for i in sorted(trainer.data["names"])]
        sources = aligned_rows(base.names, dataset_names, label_of)
        for model in (trainer.model, trainer.ema.ema if trainer.ema else None):
            if model is not None:
                align_classify_head(unwrap_model(model).model[-1].linear, base_head, sources)

    return align
