"""What every task provides; the loop and the runner know tasks only through this."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Split

Outputs = torch.Tensor | dict[str, Any]


class Task:
    """The paper-specific part of a run.

    - :meth:`setup` adapts the splits once before training (P3 hides labels, P4 builds a
      vocabulary from the training captions); :meth:`model_sizes` gives the head what the
      data fixes; :meth:`fields` the per-sample tensors its batches carry.
    - :meth:`training_step` ``(model, batch) -> loss`` may read any batch field (teacher
      forcing included) and calls the model only through ``model(...)``, so data-parallel
      training sees every step.
    - :meth:`predict_step` ``(model, images) -> outputs`` gets the images and nothing it
      could leak; outputs are a tensor, or a dict of tensors and lists, one row per image.
    - :meth:`evaluate` ``(outputs, split) -> {name: number}``; :attr:`selection` the
      validation metric that picks the epoch and whether higher is better.
    - :meth:`test_outputs` what a paired bootstrap between runs needs of the test outputs,
      kept beside ``metrics.json`` (by default nothing: the report then gives no interval).
    - optional: :meth:`calibrate` on :attr:`calibration_split`'s outputs after training
      (per-label thresholds), several training :attr:`rounds` with :meth:`next_round` in
      between (curriculum labelling), and a JSON :meth:`state_dict` saved with the run.
    """

    name = "task"
    selection: tuple[str, str] = ("mAP", "max")  # (metric of evaluate on val, "max" or "min")
    flips = True  # whether a flipped image keeps its targets true (captions say "left")
    calibration_split: str | None = None
    rounds = 1

    def __init__(self, loss: nn.Module):
        self.loss = loss

    def setup(self, splits: dict[str, Split], seed: int) -> dict[str, Split]:
        return splits

    def model_sizes(self, train: Split) -> dict[str, int]:
        return {"num_classes": train.num_classes}

    def fields(self, split: Split) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sampler(self, split: Split, batch_size: int):
        """The training order (see :mod:`annotlib.data.samplers`); None: shuffled."""
        return

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def predict_step(self, model: nn.Module, images: torch.Tensor) -> Outputs:
        raise NotImplementedError

    def evaluate(self, outputs: Outputs, split: Split) -> dict[str, float]:
        raise NotImplementedError

    def validation_metrics(self, outputs: Outputs, split: Split) -> dict[str, float]:
        """What is computed on val after every epoch; by default :meth:`evaluate`."""
        return self.evaluate(outputs, split)

    def test_outputs(self, outputs: Outputs, split: Split) -> dict[str, np.ndarray]:
        """What the report's paired bootstrap needs of the test split's ``outputs``, by name
        (see :func:`annotlib.stats.weighted_metric`): :func:`~annotlib.stats.multilabel_outputs`
        for label scores, :func:`~annotlib.stats.image_values` for a metric that is a mean over
        images. Written to ``test_outputs.npz`` beside ``metrics.json``: for a COCO-sized test
        set (40,504 images x 80 labels) 12.5 MB with scores, at most 0.16 MB per per-image metric.
        By default nothing is kept, and the report says so instead of giving an interval."""
        return {}

    def calibrate(self, outputs: Outputs, split: Split) -> dict:
        """Fit what evaluation needs from :attr:`calibration_split`; returns facts to record."""
        return {}

    def next_round(self, run, round_: int) -> dict:
        """Prepare training round ``round_`` (from 1) on ``run``; returns facts to record."""
        raise NotImplementedError

    def protocol(self) -> list[str]:
        """How this task selects and evaluates, in words, for the run's record."""
        metric, mode = self.selection
        return [f"epoch chosen on val {metric} ({'highest' if mode == 'max' else 'lowest'})"]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
