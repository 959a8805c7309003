"""The resolved configuration of one training run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import read_json

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("onecycle", "cosine", "step", "none")
SELECTION_SPLITS = ("val", "test")
# Fields that change how a run is shown, not what it computes.
COSMETIC_FIELDS = ("progress",)
# Fields of configs written before tasks and heads were named, and where they live now.
# Values equal to the new home's default are dropped, so an old run keeps its identity.
LEGACY_FIELDS = {"threshold_split": ("task_kwargs", "val"), "label_proportion": ("task_kwargs", 1.0),
                 "curriculum_rounds": ("task_kwargs", 0), "curriculum_threshold": ("task_kwargs", 0.9),
                 "dropout": ("head_kwargs", 0.3)}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run's numbers. Defaults are a CPU-sized multi-label run
    on the synthetic set; paper recipes live in :mod:`annotlib.papers`.

    ``task``, ``head`` and ``loss`` name entries of the task, head and loss registries
    (:mod:`annotlib.tasks`, :mod:`annotlib.models`, :mod:`annotlib.losses`); each takes its
    options from the matching ``*_kwargs``.
    """

    paper: str = ""  # the papers-registry entry whose recipe this run follows ("" for none)
    # data
    dataset: str = "synthetic"
    data_root: str | None = None  # default: $ANNOTLIB_DATA_ROOT/<dataset folder>
    val_fraction: float = 0.1  # carved from train where a dataset has no official val split
    # The split evaluated as test. "val" serves where the test images are missing (as with the
    # VOC 2007 copy used here); validation is then carved from train.
    test_split: str = "test"
    # The split whose task.selection metric picks the epoch (history.csv: <split>_<metric>).
    # "test" is P0's published protocol: optimistic, since the test split then chooses the
    # weights it scores; the run says so in its metrics.json (selection, protocol).
    selection_split: str = "val"
    image_size: int = 96  # images are squashed to image_size x image_size (P0's resize)
    normalize: str = "backbone"  # "backbone": its pretraining mean/std; "dataset": the train split's (P0)
    hflip: bool = True
    vflip: bool = True
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range; None: no crop
    # task: what is trained and how it is evaluated (e.g. P3's label_proportion is a multilabel option)
    task: str = "multilabel"
    task_kwargs: dict = field(default_factory=dict)
    # model
    backbone: str = "mobilenetv2_100"  # any timm name
    weights_file: str | None = None  # local pretrained weights in timm layout
    pretrained: bool = False  # timm's pretrained weights from its hub, for machines that reach it
    head: str = "multilabel"
    head_kwargs: dict = field(default_factory=dict)
    # loss
    loss: str = "unsymmetric"
    loss_kwargs: dict = field(default_factory=dict)
    # optimisation
    optimizer: str = "adam"  # adam, adamw or sgd
    lr: float = 1e-4
    backbone_lr: float | None = None  # None: lr; 0: the backbone is frozen (P1)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    scheduler: str = "onecycle"  # onecycle, cosine (to 0 over the run), step, or none
    pct_start: float = 0.2  # onecycle's warm-up share
    step_epochs: int = 30  # step: the learning rate is multiplied by step_gamma every step_epochs
    step_gamma: float = 0.1
    epochs: int = 40
    batch_size: int = 32
    eval_batch_size: int = 128
    # runtime
    device: str = "auto"  # "auto": cuda when available, else cpu
    bf16: bool = True  # bf16 autocast where the device has bf16 arithmetic (the loss stays in fp32)
    channels_last: bool | None = None  # None: the layout measured faster on the device
    compile: bool = False
    # SyncBatchNorm under several processes: "auto" where the per-rank batch is small on GPUs
    # (annotlib.train.distributed.sync_batchnorm), or always (true) / never (false)
    sync_bn: str | bool = "auto"
    seed: int = 1
    progress: bool = True

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of every field that changes the numbers (all but :data:`COSMETIC_FIELDS`)."""
        values = {k: v for k, v in self.to_dict().items() if k not in COSMETIC_FIELDS}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: TrainConfig) -> list[str]:
        """``field: ours vs theirs`` for every field (but the cosmetic ones) that differs."""
        return [f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in dataclasses.fields(self) if f.name not in COSMETIC_FIELDS
                and getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from its ``to_dict`` form, JSON values accepted (lists for tuples). The
        fields of older configs (:data:`LEGACY_FIELDS`) move to their new home."""
        values = {k: v for k, v in values.items() if k != "fingerprint"}  # written beside the fields
        for name, (home, default) in LEGACY_FIELDS.items():
            if name in values:
                value = values.pop(name)
                if value != default:
                    values[home] = {name: value, **values.get(home, {})}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values)

    def __post_init__(self):
        """Every field checked (:data:`CHECKS`) when the config is built, so a bad value fails
        before anything is decoded, trained or written."""
        if isinstance(self.crop_scale, list):  # as JSON and the command line give it
            object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        for name, (check, allowed) in CHECKS.items():
            value = getattr(self, name)
            if not check(value):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is not an epoch count


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional(check: Callable) -> Callable:
    return lambda v: v is None or check(v)


def _device(v) -> bool:
    if v == "auto":
        return True
    try:
        torch.device(v)
    except (RuntimeError, TypeError):
        return False
    return isinstance(v, str)


def _options(v) -> bool:
    """Keyword arguments (string keys) that the fingerprint and config.json can hold."""
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        return False
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _choice(allowed) -> tuple[Callable, str]:
    return (lambda v: v in allowed), f"one of {', '.join(allowed)}"


POSITIVE_INT = (lambda v: _int(v) and v > 0), "a positive integer"
BOOL = (lambda v: isinstance(v, bool)), "true or false"
NAME = (lambda v: isinstance(v, str) and v != ""), "a non-empty string"
OPTIONS = _options, "a dict of options"
PATH = _optional(lambda v: isinstance(v, str) and v != ""), "None or a path as a string"
# What each field allows: (check, description); the description completes "must be ...".
CHECKS: dict[str, tuple[Callable, str]] = {
    "paper": ((lambda v: isinstance(v, str)), "a string"),
    "dataset": NAME,
    "data_root": PATH,
    "val_fraction": ((lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)"),
    "test_split": NAME,
    "selection_split": _choice(SELECTION_SPLITS),
    "image_size": POSITIVE_INT,
    "normalize": _choice(("backbone", "dataset")),
    "hflip": BOOL,
    "vflip": BOOL,
    "crop_scale": (_optional(lambda v: isinstance(v, tuple) and len(v) == 2 and all(map(_number, v))
                             and 0 < v[0] <= v[1] <= 1),
                   "None or two numbers (a, b) with 0 < a <= b <= 1"),
    "task": NAME,
    "task_kwargs": OPTIONS,
    "backbone": NAME,
    "weights_file": PATH,
    "pretrained": BOOL,
    "head": NAME,
    "head_kwargs": OPTIONS,
    "loss": NAME,
    "loss_kwargs": OPTIONS,
    "optimizer": _choice(OPTIMIZERS),
    "lr": ((lambda v: _number(v) and v > 0), "a number > 0"),
    "backbone_lr": (_optional(lambda v: _number(v) and v >= 0), "None or a number >= 0"),
    "weight_decay": ((lambda v: _number(v) and v >= 0), "a number >= 0"),
    "momentum": ((lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)"),
    "nesterov": BOOL,
    "scheduler": _choice(SCHEDULERS),
    "pct_start": ((lambda v: _number(v) and 0 < v < 1), "a number in (0, 1)"),
    "step_epochs": POSITIVE_INT,
    "step_gamma": ((lambda v: _number(v) and v > 0), "a number > 0"),
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "device": (_device, '"auto" or a torch device such as "cpu" or "cuda:0"'),
    "bf16": BOOL,
    "channels_last": (_optional(lambda v: isinstance(v, bool)), "None, true or false"),
    "compile": BOOL,
    "sync_bn": ((lambda v: v == "auto" or isinstance(v, bool)), '"auto", true or false'),
    # numpy's generators, which draw validation splits and hidden labels, refuse negative seeds
    "seed": ((lambda v: _int(v) and v >= 0), "a non-negative integer"),
    "progress": BOOL,
}


def check_validation_needs(cfg: TrainConfig, calibration_split: str | None) -> None:
    """Refuse ``val_fraction=0`` (no validation split carved from train: P0 trains on all of
    it) where something reads val: the epoch selection (``selection_split``) or the task's
    calibration (``calibration_split``, for the multilabel task its ``threshold_split``).
    Checked once the task is built, since only the task knows where it calibrates."""
    if cfg.val_fraction != 0:
        return
    needs = ([f"selection_split={cfg.selection_split!r}"] if cfg.selection_split == "val" else []) + \
        ([f"task_kwargs threshold_split='val' (the {cfg.task} task calibrates there)"]
         if calibration_split == "val" else [])
    if needs:
        raise ValueError(f"val_fraction=0 carves no validation split, but {' and '.join(needs)} "
                         "need one; set val_fraction > 0, or select and calibrate on other splits")


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=5", "backbone=resnet18"]`` -> config fields; values are read as JSON where
    they parse (numbers, true/false, null, lists, objects), else kept as strings."""
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
