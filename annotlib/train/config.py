"""The resolved configuration of one training run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..io import read_json


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers. Defaults are a CPU-sized run on the
    synthetic set; paper recipes live in :mod:`annotlib.experiments`."""

    # data
    dataset: str = "synthetic"
    data_root: str | None = None  # default: $ANNOTLIB_DATA_ROOT/<dataset folder>
    val_fraction: float = 0.1  # carved from train where a dataset has no official val split
    # The split evaluated as test. "val" serves where the test images are missing (as with the
    # VOC 2007 copy used here); validation is then carved from train.
    test_split: str = "test"
    image_size: int = 96  # images are squashed to image_size x image_size (P0's resize)
    normalize: str = "backbone"  # "backbone": its pretraining mean/std; "dataset": the train split's (P0)
    hflip: bool = True
    vflip: bool = True
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range; None: no crop
    # partial labels (P3): the proportion of each train/val image's labels kept known, and
    # curriculum labelling rounds that turn confident predictions into pseudo-labels
    label_proportion: float = 1.0
    curriculum_rounds: int = 0  # extra training rounds, each on the previous round's pseudo-labels
    curriculum_threshold: float = 0.9  # score >= t -> positive, <= 1 - t -> negative
    # model
    backbone: str = "mobilenetv2_100"  # any timm name
    weights_file: str | None = None  # local pretrained weights in timm layout
    dropout: float = 0.3
    # loss
    loss: str = "unsymmetric"
    loss_kwargs: dict = field(default_factory=dict)
    # optimisation
    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    pct_start: float = 0.2  # OneCycleLR warm-up share
    epochs: int = 40
    batch_size: int = 32
    eval_batch_size: int = 128
    # evaluation
    threshold_split: str = "val"  # where per-label MCC thresholds are tuned: "val", or "train" as in P0
    # runtime
    device: str = "auto"  # "auto": cuda when available, else cpu
    bf16: bool = True  # bf16 autocast where the device has bf16 arithmetic (the loss stays in fp32)
    channels_last: bool | None = None  # None: the layout measured faster on the device
    compile: bool = False
    seed: int = 1
    progress: bool = True

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        values = dict(values)
        if values.get("crop_scale") is not None:
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)

    def __post_init__(self):
        if self.threshold_split not in ("val", "train"):
            raise ValueError(f"threshold_split must be 'val' or 'train', got {self.threshold_split!r}")
        if self.normalize not in ("backbone", "dataset"):
            raise ValueError(f"normalize must be 'backbone' or 'dataset', got {self.normalize!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=5", "backbone=resnet18"]`` -> config fields; values are read as JSON where
    they parse (numbers, true/false, null, lists), else kept as strings."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def config_from(path: str | Path | None, overrides: list[str]) -> TrainConfig:
    """The config in ``path`` (a run's ``config.json``), or the defaults without one, with
    ``FIELD=VALUE`` overrides (:func:`parse_overrides`) applied."""
    base = TrainConfig.from_dict(read_json(path)) if path else TrainConfig()
    return base.replace(**parse_overrides(overrides))
