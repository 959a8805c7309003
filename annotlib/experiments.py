"""Per-paper recipes, the run grid of each profile, and the papers' reported numbers.

Recipes are :class:`~annotlib.train.TrainConfig` values with the paper's settings;
a notebook or ``run_all.sh`` overrides fields (``P0_RECIPE.replace(epochs=2)``).
Reported numbers are copied from the papers (see PAPERS.md) as data, so reports can
put ours beside theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .train.config import TrainConfig
from .train.run import run_annotation

# P0 (Salar & Ahmadi 2023): TResNet-M at 448 px, squash resize, horizontal and vertical
# flips, per-dataset mean/std, Adam 1e-4 with OneCycle (pct_start 0.2), batch 32, 40
# epochs, seed 1, Dropout(0.3) + Linear head. P0 tunes thresholds on the training set
# and picks the epoch on the test set; we tune on, and select on, a validation split
# carved from train (threshold_split="train" restores P0's threshold protocol).
P0_RECIPE = TrainConfig(
    dataset="corel-5k", backbone="tresnet_m", image_size=448, normalize="dataset",
    hflip=True, vflip=True, dropout=0.3, loss="unsymmetric", optimizer="adam", lr=1e-4,
    pct_start=0.2, batch_size=32, epochs=40, seed=1, threshold_split="val",
)

# The losses P0 compares, with P0's settings (each loss's defaults are P0's values;
# focal uses gamma 3 on both sides).
P0_LOSSES: dict[str, dict] = {
    "bce": {},
    "focal": {"gamma_pos": 3.0, "gamma_neg": 3.0},
    "asl": {},
    "unsymmetric": {},
}


def _row(cp, cr, cf1, n_plus):
    return {"CP": cp, "CR": cr, "CF1": cf1, "N+": n_plus}


# P0's Table (test split), its proposed loss: at threshold 0.5 and with MCC thresholds.
P0_REPORTED: dict[str, dict[str, dict]] = {
    "corel-5k": {"at_0.5": _row(.466, .554, .506, 189), "tuned": _row(.484, .563, .520, 191)},
    "iapr-tc-12": {"at_0.5": _row(.503, .562, .531, 285), "tuned": _row(.562, .515, .537, 277)},
    "esp-game": {"at_0.5": _row(.423, .484, .452, 261), "tuned": _row(.508, .421, .461, 255)},
}

# P0's loss ablation on Corel-5k (TResNet-M 448): CF1 and N+ at 0.5 and with MCC thresholds.
P0_LOSS_ABLATION: dict[str, dict[str, dict]] = {
    "bce": {"at_0.5": {"CF1": .416, "N+": 147}, "tuned": {"CF1": .448, "N+": 164}},
    "focal": {"at_0.5": {"CF1": .405, "N+": 139}, "tuned": {"CF1": .466, "N+": 162}},
    "asl": {"at_0.5": {"CF1": .500, "N+": 179}, "tuned": {"CF1": .502, "N+": 184}},
    "unsymmetric": {"at_0.5": {"CF1": .506, "N+": 189}, "tuned": {"CF1": .520, "N+": 191}},
}


def p0_reported(dataset: str, loss: str) -> dict[str, dict] | None:
    """P0's published numbers for (dataset, loss), or None where P0 has none."""
    if loss == "unsymmetric" and dataset in P0_REPORTED:
        return P0_REPORTED[dataset]
    if dataset == "corel-5k":
        return P0_LOSS_ABLATION.get(loss)
    return None


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a paper, a config, and where its results go. ``parameters`` are
    the notebook parameters of the run beyond its config: P3's notebook sweeps
    ``proportions`` x ``methods`` (each in its own sub-folder), so a P3 run is named by its
    dataset and seed alone."""

    paper: str
    config: TrainConfig
    parameters: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        c = self.config
        if self.paper == "p3":
            return f"{self.paper}/{c.dataset}/seed{c.seed}"
        return f"{self.paper}/{c.dataset}/{c.loss}-seed{c.seed}"


# CPU-sized P0 on the synthetic set. Squash-resized 96 px synthetic images, a small
# backbone from scratch (no pretrained weights are needed for synthetic data).
P0_QUICK = P0_RECIPE.replace(dataset="synthetic", backbone="resnet10t", image_size=96, epochs=8,
                             batch_size=64, lr=2e-3, normalize="dataset")


def p0_config(dataset: str = "synthetic", loss: str = "unsymmetric", **fields) -> TrainConfig:
    """P0's recipe for ``dataset`` (CPU-sized on the synthetic set) with ``loss`` at P0's
    settings, then any other :class:`TrainConfig` ``fields`` (JSON values are accepted:
    lists become tuples)."""
    base = P0_QUICK if dataset == "synthetic" else P0_RECIPE
    values = {**base.to_dict(), "loss_kwargs": P0_LOSSES.get(loss, {}), **fields,
              "dataset": dataset, "loss": loss}
    return TrainConfig.from_dict(values)


# P3 (Durand, Mehrasa & Mori 2019): each method it compares, as the config fields it sets.
# Every method keeps the loss's defaults (partial-BCE's are P3's g(p) constants); the
# curriculum is one extra round with TrainConfig's default threshold (0.9).
P3_METHODS: dict[str, dict] = {
    "partial_bce": {"loss": "partial_bce", "loss_kwargs": {}, "curriculum_rounds": 0},
    "known_only": {"loss": "bce_known", "loss_kwargs": {}, "curriculum_rounds": 0},
    "unknown_negative": {"loss": "bce_unknown_negative", "loss_kwargs": {}, "curriculum_rounds": 0},
    "curriculum": {"loss": "partial_bce", "loss_kwargs": {}, "curriculum_rounds": 1},
}
# The fields a P3 method and proportion set; p3_config refuses them as overrides.
P3_METHOD_FIELDS = ("loss", "loss_kwargs", "label_proportion", "curriculum_rounds")
P3_PROPORTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # P3's p grid: 0.1, 0.2, ..., 1.0
# What P3 reports: curves of mAP against p on VOC 2007, MS-COCO, NUS-WIDE and Open Images.
P3_CLAIM = ("P3 reports partial-BCE at or above both baselines at every p; "
            "no numeric table in our sources.")

# P3 on real data: P3's model, an ImageNet-pretrained ResNet-101 at 448 x 448 (pretrained only
# through ``weights_file``: the training code never downloads). Assumed, as our sources do not
# give P3's training details: P0's optimisation (Adam 1e-4, OneCycle with pct_start 0.2,
# batch 32), 20 epochs, squash resize with horizontal flips only, the backbone's mean/std,
# and a plain linear head (no dropout).
P3_RECIPE = TrainConfig(
    dataset="voc2007", backbone="resnet101", image_size=448, normalize="backbone", hflip=True,
    vflip=False, dropout=0.0, loss="partial_bce", optimizer="adam", lr=1e-4, pct_start=0.2,
    batch_size=32, epochs=20, seed=1, threshold_split="val",
)
# CPU-sized P3 on the synthetic set: P0's quick model at 64 px for 3 epochs, chosen by
# measurement: 3 proportions x 4 methods took 331 s on 2 cores and the whole quick profile
# 14 min 57 s, too close to its 15-minute budget, so the quick sweep keeps 2 proportions.
P3_QUICK = P0_QUICK.replace(image_size=64, epochs=3, loss="partial_bce", loss_kwargs={})
P3_QUICK_PROPORTIONS = (0.1, 0.5)


def p3_config(dataset: str = "synthetic", method: str = "partial_bce", proportion: float = 1.0,
              **fields) -> TrainConfig:
    """P3's recipe for ``dataset`` (CPU-sized on the synthetic set) with ``method`` (a key of
    :data:`P3_METHODS`) on training labels of which a ``proportion`` p is kept known per
    image, then any other :class:`TrainConfig` ``fields`` (JSON values are accepted)."""
    if method not in P3_METHODS:
        raise ValueError(f"unknown P3 method {method!r}; known: {', '.join(P3_METHODS)}")
    if not 0 < proportion <= 1:
        raise ValueError(f"proportion must be in (0, 1], got {proportion}")
    clash = sorted(set(fields) & set(P3_METHOD_FIELDS))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the P3 method and proportion, not by a field")
    base = P3_QUICK if dataset == "synthetic" else P3_RECIPE
    values = {**base.to_dict(), **fields, **P3_METHODS[method], "dataset": dataset,
              "label_proportion": float(proportion)}
    return TrainConfig.from_dict(values)


def p3_variant(proportion: float, method: str) -> str:
    """The sub-folder of a P3 run that holds one (proportion, method): ``p0.1/partial_bce``."""
    return f"p{proportion:g}/{method}"


def p3_sweep(dataset: str, proportions, methods, **fields) -> list[tuple[float, str, TrainConfig]]:
    """(proportion, method, config) for every pair, proportions outermost."""
    return [(p, m, p3_config(dataset, m, p, **fields)) for p in proportions for m in methods]


def p3_fields(cfg: TrainConfig) -> dict:
    """The fields of ``cfg`` that :func:`p3_config` takes as overrides (all but the dataset
    and the fields each method and proportion set)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in (*P3_METHOD_FIELDS, "dataset")}


def run_partial_labels(dataset: str, proportions, methods, output_dir: str | Path, **fields) -> pd.DataFrame:
    """Train and evaluate every (proportion, method) of P3 into
    ``<output_dir>/p<proportion>/<method>/`` (each resumable, a finished one only read back).
    Returns one row per pair: proportion, method, seed, test mAP, the annotation metrics at
    0.5, and CF1/OF1 at the tuned thresholds as ``"CF1 (tuned)"``, ``"OF1 (tuned)"``."""
    rows = []
    for p, method, cfg in p3_sweep(dataset, proportions, methods, **fields):
        test = run_annotation(cfg, Path(output_dir) / p3_variant(p, method))["test"]
        rows.append({"proportion": p, "method": method, "seed": cfg.seed, "mAP": test["mAP"], **test["at_0.5"],
                     **{f"{name} (tuned)": test["tuned"][name] for name in ("CF1", "OF1")}})
    return pd.DataFrame(rows)


def grid(profile: str, *, datasets: list[str] | None = None, seeds: list[int] | None = None) -> list[Run]:
    """The runs of a profile: ``smoke`` (seconds, for the tests), ``quick`` (CPU, synthetic,
    every P0 loss and P3 method), ``paper`` (the papers' recipes on the real datasets, for a
    GPU). ``datasets`` replaces the paper profile's datasets of every paper."""
    if profile == "smoke":
        base, datasets, seeds = P0_QUICK.replace(epochs=1), ["synthetic"], seeds or [0]
        losses = ["bce", "unsymmetric"]
        p3_base, p3_datasets = P3_QUICK.replace(epochs=1, image_size=48), ["synthetic"]
        proportions, methods = [0.1, 0.5], ["partial_bce", "unknown_negative"]
    elif profile == "quick":
        base, datasets, seeds = P0_QUICK, ["synthetic"], seeds or [0]
        losses = list(P0_LOSSES)
        p3_base, p3_datasets = P3_QUICK, ["synthetic"]
        proportions, methods = list(P3_QUICK_PROPORTIONS), list(P3_METHODS)
    elif profile == "paper":
        p3_datasets = datasets or ["voc2007", "coco2014"]
        base, datasets, seeds = P0_RECIPE, datasets or ["corel-5k", "iapr-tc-12", "esp-game"], seeds or [1]
        losses = list(P0_LOSSES)
        p3_base, proportions, methods = P3_RECIPE, list(P3_PROPORTIONS), list(P3_METHODS)
    else:
        raise ValueError(f"unknown profile {profile!r}; expected smoke, quick or paper")
    p0 = [Run("p0", base.replace(dataset=d, loss=loss, loss_kwargs=P0_LOSSES[loss], seed=s))
          for d in datasets for loss in losses for s in seeds]
    p3 = [Run("p3", p3_base.replace(dataset=d, seed=s), {"proportions": list(proportions), "methods": list(methods)})
          for d in p3_datasets for s in seeds]
    return p0 + p3
