"""Per-paper recipes, the run grid of each profile, and the papers' reported numbers.

Recipes are :class:`~annotlib.train.TrainConfig` values with the paper's settings;
a notebook or ``run_all.sh`` overrides fields (``P0_RECIPE.replace(epochs=2)``).
Reported numbers are copied from the papers (see PAPERS.md) as data, so reports can
put ours beside theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .train.config import TrainConfig

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
    """One cell of the grid: a paper, a config, and where its results go."""

    paper: str
    config: TrainConfig

    @property
    def path(self) -> str:
        c = self.config
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


def grid(profile: str, *, datasets: list[str] | None = None, seeds: list[int] | None = None) -> list[Run]:
    """The runs of a profile: ``smoke`` (seconds, for the tests), ``quick`` (CPU, synthetic,
    every P0 loss), ``paper`` (P0's recipe on the real datasets, for a GPU)."""
    if profile == "smoke":
        base, datasets, seeds = P0_QUICK.replace(epochs=1), ["synthetic"], seeds or [0]
        losses = ["bce", "unsymmetric"]
    elif profile == "quick":
        base, datasets, seeds = P0_QUICK, ["synthetic"], seeds or [0]
        losses = list(P0_LOSSES)
    elif profile == "paper":
        base, datasets, seeds = P0_RECIPE, datasets or ["corel-5k", "iapr-tc-12", "esp-game"], seeds or [1]
        losses = list(P0_LOSSES)
    else:
        raise ValueError(f"unknown profile {profile!r}; expected smoke, quick or paper")
    return [Run("p0", base.replace(dataset=d, loss=loss, loss_kwargs=P0_LOSSES[loss], seed=s))
            for d in datasets for loss in losses for s in seeds]
