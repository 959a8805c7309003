"""A whole annotation run from a config: data, model, loss, fit, thresholds, metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DeviceBatches, Split, cached_images, channel_stats, load_split
from ..data.labels import carve_validation, keep_label_proportion, pseudo_label
from ..io import read_json, write_json
from ..losses import create_loss
from ..metrics import annotation_metrics, mean_average_precision, tune_thresholds
from ..models import Annotator
from . import distributed
from .config import TrainConfig
from .distributed import Context
from .loop import fit, native_bf16, predict, resolve_device, use_channels_last
from .tasks import MultiLabelTask

# Fields that change how a run is shown, not what it computes.
COSMETIC_FIELDS = ("progress",)
SPLITS = ("train", "val", "test")
DEFAULT_THRESHOLD = 0.5


def evaluate_scores(scores: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor) -> dict:
    """mAP and the annotation metrics at 0.5 and at the given per-label thresholds."""
    return {"mAP": mean_average_precision(scores, targets),
            "at_0.5": annotation_metrics(scores, targets, DEFAULT_THRESHOLD),
            "tuned": annotation_metrics(scores, targets, thresholds)}


@dataclass
class AnnotationRun:
    """The data, model and task of one run, for training and for looking at it afterwards
    (scores, embeddings, CAMs in the notebooks)."""

    cfg: TrainConfig
    splits: dict[str, Split]
    images: dict[str, np.ndarray]  # per split, N x S x S x 3 uint8 (the decoded cache)
    model: Annotator
    task: MultiLabelTask
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def classes(self) -> list[str]:
        return self.splits["train"].classes

    def batches(self, split: str, train: bool = False, ctx: Context | None = None) -> DeviceBatches:
        """Batches of ``split``; for training under several processes, this rank's shard with
        its share of the batch (the global batch stays ``cfg.batch_size``)."""
        cfg, ctx = self.cfg, ctx or Context(device=self.device)
        if train and cfg.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {ctx.world_size} processes")
        return DeviceBatches(self.images[split], self.splits[split].labels, device=self.device,
                             mean=self.mean, std=self.std, train=train,
                             batch_size=cfg.batch_size // ctx.world_size if train else cfg.eval_batch_size,
                             hflip=cfg.hflip, vflip=cfg.vflip, crop_scale=cfg.crop_scale,
                             channels_last=use_channels_last(cfg, self.device), seed=cfg.seed,
                             rank=ctx.rank if train else 0, world_size=ctx.world_size if train else 1)

    def scores(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid scores and targets of ``split`` on the CPU."""
        outputs, targets = predict(self.model, self.task.forward, self.batches(split), bf16=self.cfg.bf16)
        return self.task.scores(outputs).cpu(), targets.cpu()

    def embeddings(self, split: str) -> torch.Tensor:
        """Pooled backbone features (``model.embed``) of ``split`` on the CPU, N x D."""
        return predict(self.model, lambda model, x, y: model.embed(x), self.batches(split),
                       bf16=self.cfg.bf16)[0].cpu()


def prepare_run(cfg: TrainConfig, device: torch.device | None = None) -> AnnotationRun:
    """Load the splits, decode them into the cache and build the model of ``cfg`` (untrained)
    on ``device`` (default: ``cfg.device`` resolved), in the layout its batches will have."""
    def load(split: str) -> Split:
        return load_split(cfg.dataset, split, cfg.data_root, val_fraction=cfg.val_fraction)

    if cfg.test_split == "test":
        splits = {s: load(s) for s in SPLITS}
    else:
        train, val = carve_validation(load("train"), cfg.val_fraction)
        splits = {"train": train, "val": val, "test": load(cfg.test_split)}
    if cfg.label_proportion < 1:  # P3's protocol: train and val lose labels, test stays complete
        for offset, s in enumerate(("train", "val")):
            labels = keep_label_proportion(splits[s].labels, cfg.label_proportion, cfg.seed * 2 + offset)
            splits[s] = dataclasses.replace(splits[s], labels=labels)
    images = {s: cached_images(split.image_paths, cfg.image_size, progress=cfg.progress)
              for s, split in splits.items()}
    torch.manual_seed(cfg.seed)
    model = Annotator(cfg.backbone, splits["train"].num_classes, dropout=cfg.dropout,
                      weights_file=cfg.weights_file)
    mean, std = (model.mean, model.std) if cfg.normalize == "backbone" else channel_stats(images["train"])
    device = device or resolve_device(cfg.device)
    layout = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    model.to(device, memory_format=layout)
    task = MultiLabelTask(create_loss(cfg.loss, **cfg.loss_kwargs), name=cfg.loss)
    return AnnotationRun(cfg, splits, images, model, task, device, tuple(mean), tuple(std))


def run_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label MCC thresholds, and the mask of labels that could not be tuned.

    A label without a positive in the tuning split has MCC 0 at every threshold; the tie
    rule would pick the grid's smallest value and flood the test split with that label, so
    such a label keeps the default threshold instead.
    """
    thresholds = tune_thresholds(scores, targets)
    untunable = (targets == 1).sum(0) == 0
    thresholds[untunable] = DEFAULT_THRESHOLD
    return thresholds, untunable


def claim_run_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """Write ``config.json``, or check that the run already there has the same config."""
    path = out_dir / "config.json"
    if path.exists():
        old = TrainConfig.from_dict(read_json(path))
        differs = [f.name for f in dataclasses.fields(cfg) if f.name not in COSMETIC_FIELDS
                   and getattr(old, f.name) != getattr(cfg, f.name)]
        if differs:
            raise ValueError(f"{path}: this folder holds a run with another config "
                             f"(differs in {', '.join(differs)}); use another output folder")
    write_json(path, cfg.to_dict())


def run_annotation(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train and evaluate one multi-label annotation run into ``out_dir``.

    Resumes a killed run from its last epoch; returns the stored metrics of a
    finished one without training again. The checkpoint is chosen on the validation
    split, thresholds are tuned on ``cfg.threshold_split``, and the test split is
    evaluated once, at the end. Under ``torchrun`` it trains data-parallel (see
    :mod:`annotlib.train.distributed`) and only rank 0 writes.
    """
    out = Path(out_dir)
    ctx = distributed.setup(resolve_device(cfg.device))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        claim_run_dir(cfg, out)
    ctx.barrier()
    if (out / "metrics.json").exists():
        return read_json(out / "metrics.json")
    with ctx.main_first():  # rank 0 decodes the image cache, the others then read it
        run = prepare_run(cfg, ctx.device)
    rounds, seconds = [], 0.0
    for round_ in range(cfg.curriculum_rounds + 1):
        folder = out if round_ == 0 else out / f"curriculum-round{round_}"
        if round_:  # P3's curriculum labelling: confident predictions fill unknown labels
            train = run.splits["train"]
            labels = pseudo_label(run.scores("train")[0], train.labels, threshold=cfg.curriculum_threshold)
            rounds.append({"round": round_, "pseudo_labels": int((train.labels < 0).sum() - (labels < 0).sum()),
                           "unknown_left": int((labels < 0).sum())})
            run.splits["train"] = dataclasses.replace(train, labels=labels)
        history = fit(run.model, run.task, run.batches("train", train=True, ctx=ctx), run.batches("val"), cfg,
                      folder, ctx=ctx)
        seconds += sum(row["train_seconds"] for row in history)
        run.model.load_state_dict(torch.load(folder / "best.pt", map_location=run.device, weights_only=True))
    best_epoch = max(history, key=lambda row: row["val_mAP"])["epoch"]

    results = {s: run.scores(s) for s in {"val", "test", cfg.threshold_split}}
    thresholds, untunable = run_thresholds(*results[cfg.threshold_split])
    metrics = {
        "dataset": cfg.dataset, "loss": cfg.loss, "backbone": cfg.backbone, "image_size": cfg.image_size,
        "epochs": cfg.epochs, "seed": cfg.seed, "best_epoch": best_epoch, "selected_on": "val mAP",
        "thresholds_tuned_on": cfg.threshold_split,
        "labels_without_tuning_positives": int(untunable.sum()),  # kept at the default threshold
        "num_images": {s: len(split) for s, split in run.splits.items()},
        "val": evaluate_scores(*results["val"], thresholds),
        "test": evaluate_scores(*results["test"], thresholds),
        "train_seconds": round(seconds, 2),
        # what the config's device-dependent defaults resolved to, for comparing runs across machines
        "runtime": {"device": str(run.device), "world_size": ctx.world_size,
                    "bf16_autocast": cfg.bf16 and native_bf16(run.device),
                    "channels_last": use_channels_last(cfg, run.device)},
    }
    if cfg.label_proportion < 1 or rounds:
        metrics["partial_labels"] = {"label_proportion": cfg.label_proportion, "curriculum": rounds}
    if ctx.is_main:
        write_json(out / "thresholds.json", dict(zip(run.classes, thresholds.tolist())))
        write_json(out / "metrics.json", metrics)
    ctx.barrier()
    return metrics


def load_run(out_dir: str | Path, device: str | None = None) -> AnnotationRun:
    """A finished run of :func:`run_annotation`, its best checkpoint loaded, in eval mode."""
    out = Path(out_dir)
    cfg = TrainConfig.from_dict(read_json(out / "config.json"))
    if device is not None:
        cfg = cfg.replace(device=device)
    run = prepare_run(cfg)
    run.model.load_state_dict(torch.load(out / "best.pt", map_location=run.device, weights_only=True))
    run.model.eval()  # prepare_run put it on the device, in its layout; loading keeps both
    return run


def load_thresholds(out_dir: str | Path, classes: list[str]) -> torch.Tensor:
    """The tuned per-label thresholds of a finished run, in ``classes`` order."""
    stored = read_json(Path(out_dir) / "thresholds.json")
    return torch.tensor([stored[name] for name in classes], dtype=torch.float64)
