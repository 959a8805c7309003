"""P3 (Durand, Mehrasa & Mori 2019): multi-label learning from partial labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..train.config import TrainConfig
from . import (
    REAL,
    REAL_SEEDS,
    Claim,
    Paper,
    Run,
    method_notebook_parameters,
    restrict_methods,
    run_trainings,
)
from .p0 import QUICK as P0_QUICK

# Each method P3 compares, as the loss and curriculum rounds it sets. Every method keeps the
# loss's defaults (partial-BCE's are P3's g(p) constants); the curriculum is one extra round
# at the multilabel task's default threshold (0.9).
METHODS: dict[str, dict] = {
    "partial_bce": {"loss": "partial_bce", "curriculum_rounds": 0},
    "known_only": {"loss": "bce_known", "curriculum_rounds": 0},
    "unknown_negative": {"loss": "bce_unknown_negative", "curriculum_rounds": 0},
    "curriculum": {"loss": "partial_bce", "curriculum_rounds": 1},
}
# The task options a P3 method and proportion set; p3_config refuses them as overrides.
METHOD_TASK_KWARGS = ("label_proportion", "curriculum_rounds")
PROPORTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # P3's p grid: 0.1, 0.2, ..., 1.0
CLAIM = "partial-BCE at or above both baselines at every p (curves; no numeric table in our sources)"

# P3's model is an ImageNet-pretrained ResNet-101 at 448 x 448 (pretrained only through
# ``weights_file``: the training code never downloads). Assumed, as our sources do not give
# P3's training details: P0's optimisation (Adam 1e-4, OneCycle with pct_start 0.2, batch 32),
# 20 epochs, squash resize with horizontal flips only, the backbone's mean/std, and a plain
# linear head (no dropout).
RECIPE = TrainConfig(
    paper="p3", dataset="voc2007", backbone="resnet101", image_size=448, normalize="backbone", hflip=True,
    vflip=False, head_kwargs={"dropout": 0.0}, loss="partial_bce", optimizer="adam", lr=1e-4,
    pct_start=0.2, batch_size=32, epochs=20, seed=1,
)
# CPU-sized P3 on the synthetic set: P0's quick model at 64 px for 3 epochs, chosen by
# measurement: 3 proportions x 4 methods took 331 s on 2 cores and the whole quick profile
# 14 min 57 s, too close to its 15-minute budget, so the quick sweep keeps 2 proportions.
QUICK = P0_QUICK.replace(paper="p3", image_size=64, epochs=3, loss="partial_bce", loss_kwargs={})
QUICK_PROPORTIONS = (0.1, 0.5)


def p3_config(dataset: str = "synthetic", method: str = "partial_bce", proportion: float = 1.0,
              **fields) -> TrainConfig:
    """P3's recipe for ``dataset`` (CPU-sized on the synthetic set) with ``method`` (a key of
    :data:`METHODS`) on training labels of which a ``proportion`` p is kept known per
    image, then any other :class:`TrainConfig` ``fields`` (JSON values are accepted)."""
    if method not in METHODS:
        raise ValueError(f"unknown P3 method {method!r}; known: {', '.join(METHODS)}")
    if not 0 < proportion <= 1:
        raise ValueError(f"proportion must be in (0, 1], got {proportion}")
    clash = sorted({"loss", "loss_kwargs"} & set(fields)) + sorted(
        set(fields.get("task_kwargs", {})) & set(METHOD_TASK_KWARGS))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the P3 method and proportion, not by a field")
    base = QUICK if dataset == "synthetic" else RECIPE
    spec = METHODS[method]
    task_kwargs = {**fields.pop("task_kwargs", {}), "label_proportion": float(proportion)}
    if spec["curriculum_rounds"]:
        task_kwargs["curriculum_rounds"] = spec["curriculum_rounds"]
    values = {**base.to_dict(), **fields, "loss": spec["loss"], "loss_kwargs": {}, "dataset": dataset,
              "task_kwargs": task_kwargs}
    return TrainConfig.from_dict(values)


def p3_variant(proportion: float, method: str) -> str:
    """The sub-folder of a P3 sweep that holds one (proportion, method): ``p0.1/partial_bce``."""
    return f"p{proportion:g}/{method}"


def p3_sweep(dataset: str, proportions, methods, **fields) -> list[tuple[float, str, TrainConfig]]:
    """(proportion, method, config) for every pair, proportions outermost."""
    return [(p, m, p3_config(dataset, m, p, **fields)) for p in proportions for m in methods]


def sweep_fields(cfg: TrainConfig) -> dict:
    """The fields of a sweep's base config that :func:`p3_config` takes as overrides."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("loss", "loss_kwargs", "dataset")}


def run_partial_labels(dataset: str, proportions, methods, output_dir: str | Path, **fields) -> pd.DataFrame:
    """Train and evaluate every (proportion, method) of P3 into
    ``<output_dir>/p<proportion>/<method>/`` (each resumable, a finished one only read back).
    Returns one row per pair: proportion, method, seed and the test metrics by name."""
    sweep = p3_sweep(dataset, proportions, methods, **fields)
    trained = run_trainings([(p3_variant(p, method), cfg) for p, method, cfg in sweep], output_dir)
    return pd.DataFrame([{"proportion": p, "method": method, "seed": cfg.seed, **metrics["test"]}
                         for (p, method, cfg), metrics in zip(sweep, trained)])


def sweep_table(results: pd.DataFrame, metrics=("mAP", "CF1@0.5", "CF1@tuned")) -> pd.DataFrame:
    """One sweep's test ``metrics`` (rows of :func:`run_partial_labels`): methods as rows in
    :data:`METHODS` order, (metric, p) as columns."""
    table = results.pivot_table(index="method", columns="proportion", values=list(metrics), aggfunc="mean")
    order = [m for m in METHODS if m in set(results["method"])]
    return table.reindex(index=order)[list(metrics)]


def trainings(run: Run) -> list[tuple[str, TrainConfig]]:
    sweep = p3_sweep(run.config.dataset, run.parameters["proportions"], run.parameters["methods"],
                     **sweep_fields(run.config))
    return [(p3_variant(p, method), cfg) for p, method, cfg in sweep]


def grid(profile: str, datasets: list[str] | None, seeds: list[int] | None) -> list[Run]:
    if profile == "smoke":
        base, datasets, seeds = QUICK.replace(epochs=1, image_size=48), ["synthetic"], seeds or [0]
        proportions, methods = [0.1, 0.5], ["partial_bce", "unknown_negative"]
    elif profile == "quick":
        base, datasets, seeds = QUICK, ["synthetic"], seeds or [0]
        proportions, methods = list(QUICK_PROPORTIONS), list(METHODS)
    elif profile == "real":
        # VOC 2007 (its official val evaluated as test), partial-BCE against both baselines at
        # two proportions on frozen features: Adam at 3e-3 for a linear probe, 10 epochs.
        base = RECIPE.replace(**REAL, lr=3e-3, epochs=10, test_split="val")
        datasets, seeds = datasets or ["voc2007"], seeds or REAL_SEEDS
        proportions, methods = list(QUICK_PROPORTIONS), ["partial_bce", "known_only", "unknown_negative"]
    else:
        base, datasets, seeds = RECIPE, datasets or ["voc2007", "coco2014"], seeds or [1]
        proportions, methods = list(PROPORTIONS), list(METHODS)
    return [Run("p3", f"seed{s}", base.replace(dataset=d, seed=s),
                {"proportions": list(proportions), "methods": list(methods)})
            for d in datasets for s in seeds]


def row(metrics: dict) -> dict:
    method = metrics["variant"].rsplit("/", 1)[-1]
    return {"method": method, "p": metrics["config"]["task_kwargs"].get("label_proportion", 1.0)}


def differences(metrics: dict) -> list[str]:
    """How a run differs from P3's model (ResNet-101 at 448 px, ImageNet-pretrained); the rest
    of :data:`RECIPE` is our assumption."""
    config = metrics["config"]
    out = [f"{name} {config[key]} (paper: {getattr(RECIPE, key)})" for name, key in (
        ("backbone", "backbone"), ("image size", "image_size")) if config[key] != getattr(RECIPE, key)]
    out.append("pretrained weights from a local file" if config.get("weights_file")
               else "random init (paper: ImageNet-pretrained)")
    if config["dataset"] == "synthetic":
        out.append("synthetic data")
    out.append("optimiser, schedule and epochs assumed (not in our sources)")
    return out


PAPER = Paper(
    key="p3", title="P3: multi-label learning from partial labels (Durand, Mehrasa & Mori 2019)",
    notebook="04_partial_labels.ipynb", grid=grid,
    notebook_parameters=method_notebook_parameters(("loss", "loss_kwargs")), restrict=restrict_methods, methods=tuple(METHODS),
    trainings=trainings, row_keys=("method", "p"), row=row, columns=("mAP", "CF1@0.5", "CF1@tuned"),
    reported=lambda dataset, row: {}, differences=differences, claims=(
        Claim(CLAIM, metrics=("mAP",), better={"method": "partial_bce"},
              than=({"method": "known_only"}, {"method": "unknown_negative"}),
              setting="each proportion p of known training labels; VOC 2007, MS-COCO; ResNet-101"),),
)
