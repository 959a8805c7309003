"""The papers registry: one module per paper (``annotlib/papers/p<k>.py``), each with a
``PAPER``: its notebook, recipes and grid per profile, published numbers, table columns,
claims, and how a run differs from the paper. ``reproduce`` and ``report`` read only this.

Adding a paper adds a module here (found by name, nothing to register) beside its task,
head, loss and notebook.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ..train.config import TrainConfig

PROFILES = ("smoke", "quick", "real", "paper")
# The profiles that read real datasets under the data root (the others generate the synthetic set).
REAL_DATA_PROFILES = ("real", "paper")
# The real profile: each paper's central comparison on the real data under the data root,
# sized for a 2-core CPU (at most 90 minutes for the whole profile): the ImageNet MobileNetV2
# from a local file (a name under $ANNOTLIB_WEIGHTS_ROOT), frozen, at the shared copies' 128 px,
# two seeds. A frozen backbone trains at about 1,000 images/s at 128 px on 2 cores against 125
# fine-tuned, which is what lets every paper fit with two seeds.
REAL_WEIGHTS = "mobilenetv2_100.imagenet_int8dequant.fp16.safetensors"
REAL = {"backbone": "mobilenetv2_100", "weights_file": REAL_WEIGHTS, "image_size": 128,
        "backbone_lr": 0.0}
REAL_SEEDS = [1, 2]


@dataclass(frozen=True)
class Run:
    """One cell of a grid: a paper's notebook run with ``config`` (and its own notebook
    ``parameters``) into ``runs/<paper>/<dataset>/<variant>/``."""

    paper: str
    variant: str
    config: TrainConfig
    parameters: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"{self.paper}/{self.config.dataset}/{self.variant}"


def single_training(run: Run) -> list[tuple[str, TrainConfig]]:
    return [("", run.config)]


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as the report tests it: on each of ``metrics`` (results columns),
    the rows with the row-key values ``better`` beat those with each of ``than``, higher
    being better for ``direction`` +1 and lower for -1. The row keys neither side names are
    part of the setting: the claim is tested at each of their values (P3's proportion p), and
    ``{}`` on both sides compares each row with itself on ``than_metrics`` (the other side's
    column per metric: P0's CF1@tuned against CF1@0.5 of the same runs). ``text``: the
    claim in words; ``setting``: where the paper makes it."""

    text: str
    metrics: tuple[str, ...]
    better: dict = field(default_factory=dict)
    than: tuple[dict, ...] = ({},)
    direction: int = 1
    setting: str = ""
    than_metrics: tuple[str, ...] | None = None

    def pairs(self) -> list[tuple[str, str]]:
        """(this side's column, the other side's column) per metric."""
        return list(zip(self.metrics, self.than_metrics or self.metrics))

    def check(self, paper: str, row_keys: tuple[str, ...], columns: tuple[str, ...]) -> None:
        where = f"{paper} claim {self.text!r}"
        if self.direction not in (1, -1):
            raise ValueError(f"{where}: direction must be +1 or -1, got {self.direction}")
        if self.than_metrics is not None and len(self.than_metrics) != len(self.metrics):
            raise ValueError(f"{where}: than_metrics must give one column per metric")
        unknown = sorted({m for pair in self.pairs() for m in pair} - set(columns))
        keys = sorted({k for side in (self.better, *self.than) for k in side} - set(row_keys))
        if unknown or keys or not self.than:
            raise ValueError(f"{where}: unknown columns {unknown}, unknown row keys {keys} or no "
                             f"'than' (columns: {', '.join(columns)}; row keys: {', '.join(row_keys)})")


@dataclass(frozen=True)
class Paper:
    """What the grid, the notebooks and the report need to know of one paper.

    - ``grid(profile, datasets, seeds)``: its runs (``datasets``/``seeds`` None: the profile's);
    - ``trainings(run)``: (sub-folder, config) of every training its notebook does;
    - ``notebook_parameters(run)``: the papermill parameters that make the notebook run it;
    - ``restrict(run, names)``: the run limited to the losses/methods ``names``, or None;
      ``methods`` names them all (what ``--losses`` may select);
    - ``row(metrics)``: the values of its ``row_keys``, which tell its results-table rows
      apart (``{"loss": "bce"}``);
    - ``columns``: the test metrics its table shows; ``reported(dataset, row)`` the paper's
      published numbers by column, ``differences(metrics)`` how a run differs from the paper;
    - ``claims``: what the paper claims, as :class:`Claim` s the report tests.
    """

    key: str
    title: str
    notebook: str
    grid: Callable[[str, list | None, list | None], list[Run]]
    notebook_parameters: Callable[[Run], dict]
    restrict: Callable[[Run, list[str]], Run | None]
    methods: tuple[str, ...]
    row_keys: tuple[str, ...]
    row: Callable[[dict], dict]
    columns: tuple[str, ...]
    reported: Callable[[str, dict], dict]
    differences: Callable[[dict], list[str]]
    trainings: Callable[[Run], list[tuple[str, TrainConfig]]] = single_training
    claims: tuple[Claim, ...] = ()

    def __post_init__(self) -> None:
        for claim in self.claims:
            claim.check(self.key, self.row_keys, self.columns)


# What a paper notebook's parameters cell names; the rest of a config travels as ``extra``.
NOTEBOOK_FIELDS = ("dataset", "data_root", "backbone", "weights_file", "image_size", "epochs", "batch_size",
                   "lr", "seed", "device", "progress")


def method_notebook_parameters(method_fields: tuple[str, ...]) -> Callable[[Run], dict]:
    """``notebook_parameters`` for a paper whose notebook trains several methods, each
    setting ``method_fields`` of the config itself."""
    def parameters(run: Run) -> dict:
        values = run.config.to_dict()
        named = {name: values.pop(name) for name in NOTEBOOK_FIELDS}
        for name in method_fields:
            del values[name]
        return {**named, **run.parameters, "extra": values}
    return parameters


def restrict_methods(run: Run, names: list[str]) -> Run | None:
    """``restrict`` for a run whose ``parameters["methods"]`` lists what its notebook trains."""
    methods = [m for m in run.parameters["methods"] if m in names]
    return dataclasses.replace(run, parameters={**run.parameters, "methods": methods}) if methods else None


def run_trainings(trainings: list[tuple[str, TrainConfig]], output_dir) -> list[dict]:
    """Train and evaluate each (sub-folder, config) into ``<output_dir>/<sub-folder>/``
    (resumable; a finished one is read back); their ``metrics.json`` contents, in order."""
    from pathlib import Path

    from ..train import run_annotation
    return [run_annotation(cfg, Path(output_dir) / folder, variant=folder) for folder, cfg in trainings]


def method_results(trainings: list[tuple[str, TrainConfig]], output_dir):
    """:func:`run_trainings` of (method, config) pairs as a table: one row per method with
    its seed and test metrics by name."""
    import pandas as pd

    return pd.DataFrame([{"method": method, "seed": cfg.seed, **metrics["test"]}
                         for (method, cfg), metrics in zip(trainings, run_trainings(trainings, output_dir))])


def _discover() -> dict[str, Paper]:
    papers = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        paper = getattr(importlib.import_module(f"{__name__}.{info.name}"), "PAPER", None)
        if isinstance(paper, Paper):
            papers[paper.key] = paper
    return papers


PAPERS: dict[str, Paper] = _discover()


def grid(profile: str, *, papers: list[str] | None = None, datasets: list[str] | None = None,
         seeds: list[int] | None = None) -> list[Run]:
    """The runs of ``profile`` for ``papers`` (default: all)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    unknown = sorted(set(papers or ()) - set(PAPERS))
    if unknown:
        raise ValueError(f"unknown papers {', '.join(unknown)}; known: {', '.join(PAPERS)}")
    return [run for key in (papers or PAPERS) for run in PAPERS[key].grid(profile, datasets, seeds)]


__all__ = ["NOTEBOOK_FIELDS", "PAPERS", "PROFILES", "REAL", "REAL_DATA_PROFILES", "REAL_SEEDS", "Claim", "Paper", "Run", "grid", "method_notebook_parameters",
           "method_results", "restrict_methods", "run_trainings"]
