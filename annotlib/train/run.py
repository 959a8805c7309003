"""A whole run from a config: data, task, model, fit, calibration, metrics.json."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import DeviceBatches, Split, cached_images, channel_stats, load_split
from ..data.labels import carve_validation
from ..io import json_safe, read_json, torch_load, write_json
from ..models import ImageModel, create_model
from ..stats import TEST_OUTPUTS, write_test_outputs
from ..tasks import Outputs, Task, create_task
from . import distributed
from .config import TrainConfig, check_validation_needs
from .distributed import Context
from .loop import (
    DivergedLossError,
    NonFiniteLossError,
    fit,
    native_bf16,
    predict,
    resolve_device,
    use_channels_last,
)

SPLITS = ("train", "val", "test")
# A split name with this suffix is that split's images through the training augmentation
# (P0 tunes its thresholds on its augmented training loader): "train_augmented".
AUGMENTED = "_augmented"
METRICS_SCHEMA = 1  # the version of metrics.json's layout
# A run whose training failed (a non-finite or diverged loss) writes this instead of metrics.json.
FAILED = "failed.json"
# What to do about a damaged file of a run folder: the least that makes the run whole again.
REMEDY = {"config.json": "restore it, or delete the run folder to restart that run",
          "metrics.json": "delete it to evaluate that run again from its weights",
          "task.json": "delete it and metrics.json beside it to evaluate that run again",
          "best.pt": "delete it and checkpoint.pt beside it to train that run again"}
log = logging.getLogger(__name__)


def round_folder(out: Path, round_: int) -> Path:
    """Where training round ``round_`` writes: the run folder itself, then ``round<k>/``."""
    return out if round_ == 0 else out / f"round{round_}"


@dataclass
class AnnotationRun:
    """The data, model and task of one run, for training and for looking at it afterwards
    (outputs, embeddings, CAMs in the notebooks).

    ``resident``: whether batches keep a whole split on the device (True) or stream it from
    the cache (False); None: where it fits the memory budget
    (:func:`annotlib.data.batches.fits_in_memory`)."""

    cfg: TrainConfig
    splits: dict[str, Split]
    images: dict[str, np.ndarray]  # per split, N x S x S x 3 uint8 (the decoded cache)
    model: ImageModel
    task: Task
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _outputs: dict[str, Outputs] = field(default_factory=dict, repr=False)
    _embeddings: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    resident: bool | None = None

    @property
    def classes(self) -> list[str]:
        return self.splits["train"].classes

    def batches(self, split: str, train: bool = False, ctx: Context | None = None) -> DeviceBatches:
        """Batches of ``split`` (with the task's fields for training). Under several processes
        (``ctx``, default: the process group joined, if any) this rank's shard: for training
        with its share of the batch (the global batch stays ``cfg.batch_size``), for evaluation
        to be gathered by ``predict``."""
        cfg, ctx = self.cfg, ctx or distributed.current(self.device)
        if train and cfg.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {ctx.world_size} processes")
        data = self.splits[split]
        return DeviceBatches(self.images[split], self.task.fields(data) if train else {}, device=self.device,
                             mean=self.mean, std=self.std, train=train,
                             sampler=self.task.sampler(data, cfg.batch_size) if train else None,
                             batch_size=cfg.batch_size // ctx.world_size if train else cfg.eval_batch_size,
                             hflip=cfg.hflip, vflip=cfg.vflip, crop_scale=cfg.crop_scale,
                             channels_last=use_channels_last(cfg, self.device), seed=cfg.seed,
                             rank=ctx.rank, world_size=ctx.world_size, resident=self.resident)

    def outputs(self, split: str) -> Outputs:
        """The task's predictions on ``split`` with the current weights, computed once;
        ``<split>_augmented``: on its images through the training augmentation
        (:meth:`augmented_batches`), one row per image in the split's order."""
        if split not in self._outputs:
            base = split.removesuffix(AUGMENTED)
            batches = self.batches(split) if base == split else self.augmented_batches(base)
            outputs = predict(self.model, self.task.predict_step, batches, bf16=self.cfg.bf16)
            n = len(self.splits[base])  # the augmented batches' wrapped padding is cut off
            self._outputs[split] = outputs[:n] if isinstance(outputs, torch.Tensor) else \
                {key: value[:n] for key, value in outputs.items()}
        return self._outputs[split]

    def augmented_batches(self, split: str) -> DeviceBatches:
        """Every image of ``split`` once, in order, with the training augmentation drawn as
        for one epoch past the last (reproducible). Training batches drop a last partial
        batch, so the order wraps around to whole batches; the outputs' extra rows are cut."""
        cfg, n = self.cfg, len(self.splits[split])
        padded = math.ceil(n / cfg.eval_batch_size) * cfg.eval_batch_size
        batches = DeviceBatches(self.images[split], {}, device=self.device, mean=self.mean, std=self.std,
                                train=True, sampler=lambda generator: torch.arange(padded) % n,
                                batch_size=cfg.eval_batch_size, hflip=cfg.hflip, vflip=cfg.vflip,
                                crop_scale=cfg.crop_scale, channels_last=use_channels_last(cfg, self.device),
                                seed=cfg.seed, resident=self.resident)
        batches.set_epoch(cfg.epochs)
        return batches

    def embeddings(self, split: str) -> torch.Tensor:
        """Pooled backbone features (``model.embed``) of ``split`` on the CPU, N x D, computed
        once per weights."""
        if split not in self._embeddings:
            self._embeddings[split] = predict(self.model, lambda model, images: model.embed(images),
                                              self.batches(split), bf16=self.cfg.bf16).cpu()
        return self._embeddings[split]

    def load_weights(self, path: Path) -> None:
        weights = torch_load(path, map_location=self.device, remedy=REMEDY["best.pt"])
        self.model.load_state_dict(weights)
        self._outputs.clear()
        self._embeddings.clear()


def build_task(cfg: TrainConfig) -> Task:
    task = create_task(cfg.task, cfg.loss, cfg.loss_kwargs, **cfg.task_kwargs)
    if (cfg.hflip or cfg.vflip) and not task.flips:
        raise ValueError(f"the {task.name} task's targets do not survive flips; set hflip=false vflip=false")
    check_validation_needs(cfg, task.calibration_split)
    return task


def load_splits(cfg: TrainConfig) -> dict[str, Split]:
    """train, val and test of ``cfg``, each checked to carry the same classes in the same order;
    with ``val_fraction=0`` and no official validation split, no val (train is all of it)."""
    def load(split: str) -> Split:
        return load_split(cfg.dataset, split, cfg.data_root, val_fraction=cfg.val_fraction)

    if cfg.test_split == "test":
        splits = {s: load(s) for s in SPLITS}
    else:
        train, val = carve_validation(load("train"), cfg.val_fraction)
        splits = {"train": train, "val": val, "test": load(cfg.test_split)}
    for name, split in splits.items():
        for vocabulary in ("classes", "categories"):
            if getattr(split, vocabulary) != getattr(splits["train"], vocabulary):
                raise ValueError(f"{cfg.dataset}: the {name} split's {vocabulary} differ from train's "
                                 "(or are in another order)")
    if not len(splits["val"]):
        del splits["val"]
    return splits


def prepare_run(cfg: TrainConfig, device: torch.device | None = None) -> AnnotationRun:
    """Load the splits, let the task set them up, decode them into the cache and build the
    model of ``cfg`` (untrained) on ``device`` (default: ``cfg.device`` resolved), in the
    layout its batches will have."""
    task = build_task(cfg)
    splits = task.setup(load_splits(cfg), cfg.seed)
    images = {s: cached_images(split.image_paths, cfg.image_size, progress=cfg.progress)
              for s, split in splits.items()}
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.head, cfg.backbone, weights_file=cfg.weights_file, pretrained=cfg.pretrained,
                         freeze_backbone=cfg.backbone_lr == 0, **task.model_sizes(splits["train"]),
                         **cfg.head_kwargs)
    mean, std = (model.mean, model.std) if cfg.normalize == "backbone" else channel_stats(images["train"])
    device = device or resolve_device(cfg.device)
    layout = torch.channels_last if use_channels_last(cfg, device) else torch.contiguous_format
    model.to(device, memory_format=layout)
    return AnnotationRun(cfg, splits, images, model, task, device, tuple(mean), tuple(std))


def undefined_metrics(values: dict, split: Split, name: str) -> dict[str, str]:
    """Why each non-finite metric of ``values`` (one split's) is undefined, by metric name."""
    no_positives = split.labels is not None and not bool((split.labels == 1).any())
    return {metric: f"no positive labels in the {name} split" if no_positives
            else f"{value} on the {name} split (not a finite number)"
            for metric, value in values.items()
            if isinstance(value, float) and not math.isfinite(value)}


def selection_protocol(notes: list[str], split: str) -> list[str]:
    """The task's protocol notes with the split that chose the epoch. Tasks write "epoch
    chosen on val <metric> ..."; a run that selects on test says so instead, in capitals."""
    if split == "val":
        return notes
    prefix, said = "epoch chosen on val ", f"epoch chosen on the {split.upper()} split"
    warning = "optimistic: the split that is scored also picked the weights"
    notes = [f"{said} by {note.removeprefix(prefix)} ({warning})" if note.startswith(prefix) else note
             for note in notes]
    return notes if any(note.startswith(said) for note in notes) else [f"{said} ({warning})", *notes]


def has_trained(out_dir: Path) -> bool:
    """Whether the run in ``out_dir`` finished an epoch (a ``checkpoint.pt`` or ``metrics.json``)."""
    return any((out_dir / name).exists() for name in ("checkpoint.pt", "metrics.json"))


def held_differences(cfg: TrainConfig, out_dir: Path) -> list[str]:
    """How ``cfg`` differs from the config of the run that ``out_dir`` holds ("field: ours vs
    theirs"); empty when the folder is free for ``cfg``: no ``config.json``, the same config,
    or a run that never finished an epoch (:func:`has_trained`: it failed on, say, a backbone
    name that does not exist), which holds nothing to keep. The one rule of
    :func:`claim_run_dir` and of the grid runner (:func:`annotlib.reproduce.stale`)."""
    path = out_dir / "config.json"
    if not (path.exists() and has_trained(out_dir)):
        return []
    return cfg.differences(TrainConfig.from_dict(read_json(path, REMEDY["config.json"])))


def claim_run_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """Write ``config.json``, or refuse a folder holding a run of another config with the
    differences named (:func:`held_differences`)."""
    differs = held_differences(cfg, out_dir)
    if differs:
        raise ValueError(f"{out_dir / 'config.json'}: this folder holds a run with another config "
                         f"({'; '.join(differs)}, ours vs the folder's); use another output folder")
    write_json(out_dir / "config.json", {**cfg.to_dict(), "fingerprint": cfg.fingerprint()})


def run_annotation(cfg: TrainConfig, out_dir: str | Path, *, variant: str | None = None) -> dict:
    """Train and evaluate one run of ``cfg`` into ``out_dir``; returns its ``metrics.json``.

    Resumes a killed run from its last epoch; returns the stored metrics of a finished one
    without training again. The epoch is chosen on ``cfg.selection_split`` (validation by
    default; "test" is P0's published protocol and is marked so) by the task's selection
    metric, the task calibrates on its calibration split, and the test split is evaluated at
    the end. Under ``torchrun`` it trains data-parallel (see
    :mod:`annotlib.train.distributed`) and only rank 0 writes. ``variant`` names the run in
    its paper's grid (default: the folder's name).
    """
    out = Path(out_dir)
    build_task(cfg)  # a bad task, loss or option fails here, before anything is written
    ctx = distributed.setup(resolve_device(cfg.device))
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        claim_run_dir(cfg, out)
    ctx.barrier()
    if (out / "metrics.json").exists():
        return read_json(out / "metrics.json", REMEDY["metrics.json"])
    with ctx.main_first():  # rank 0 decodes the image cache, the others then read it
        run = prepare_run(cfg, ctx.device)
    task, rounds, seconds = run.task, [], 0.0
    if ctx.is_main:
        (out / FAILED).unlink(missing_ok=True)  # an earlier attempt's; this one may succeed
    try:
        for round_ in range(task.rounds):
            folder = round_folder(out, round_)
            if round_:
                rounds.append(task.next_round(run, round_))
            history = fit(run.model, task, run.batches("train", train=True, ctx=ctx),
                          run.batches(cfg.selection_split), run.splits[cfg.selection_split], cfg, folder,
                          ctx=ctx)
            seconds += sum(row["train_seconds"] for row in history)
            run.load_weights(folder / "best.pt")
    except (NonFiniteLossError, DivergedLossError) as e:  # marked failed, never a result
        if ctx.is_main:
            write_json(out / FAILED, {"error": type(e).__name__, "message": str(e),
                                      "fingerprint": cfg.fingerprint()})
        raise
    metric, mode = task.selection
    best = (max if mode == "max" else min)(history, key=lambda row: row[f"{cfg.selection_split}_{metric}"])

    calibration = {}
    if task.calibration_split:
        split = task.calibration_split
        calibration = task.calibrate(run.outputs(split), run.splits[split.removesuffix(AUGMENTED)])
    evaluated = {s: task.evaluate(run.outputs(s), run.splits[s]) for s in ("val", "test") if s in run.splits}
    undefined = {s: reasons for s in evaluated
                 if (reasons := undefined_metrics(evaluated[s], run.splits[s], s))}
    for s, reasons in undefined.items():
        log.warning("%s: undefined %s metrics, written as null: %s", out, s,
                    "; ".join(f"{m} ({why})" for m, why in reasons.items()))
    metrics = {
        "schema": METRICS_SCHEMA, "paper": cfg.paper, "variant": variant or out.name,
        "dataset": cfg.dataset, "task": cfg.task, "head": cfg.head, "loss": cfg.loss,
        "config": cfg.to_dict(), "fingerprint": cfg.fingerprint(),
        "val": evaluated.get("val", {}), "test": evaluated["test"],
        "undefined": undefined,  # {split: {metric: reason}} for the metrics written as null
        "selection": {"split": cfg.selection_split, "metric": metric, "mode": mode, "epoch": best["epoch"]},
        "protocol": selection_protocol(task.protocol(), cfg.selection_split),
        "calibration": calibration,
        "rounds": rounds,
        "weights": str((round_folder(out, task.rounds - 1) / "best.pt").relative_to(out)),
        "num_images": {s: len(split) for s, split in run.splits.items()},
        "train_seconds": round(seconds, 2),
        # what the config's device-dependent defaults resolved to, for comparing runs across machines
        "runtime": {"device": str(run.device), "world_size": ctx.world_size,
                    "bf16_autocast": cfg.bf16 and native_bf16(run.device),
                    "channels_last": use_channels_last(cfg, run.device)},
    }
    metrics = json_safe(metrics)  # what metrics.json holds, so a later call returns the same
    if ctx.is_main:
        # per-image test outputs for the report's paired bootstrap, before metrics.json marks the run done
        test = run.splits["test"]
        write_test_outputs(out / TEST_OUTPUTS, task.test_outputs(run.outputs("test"), test), test.image_paths)
        write_json(out / "task.json", task.state_dict())
        write_json(out / "metrics.json", metrics)
    ctx.barrier()
    return metrics


def load_run(out_dir: str | Path, device: str | None = None) -> AnnotationRun:
    """A finished run of :func:`run_annotation`: its final weights (the last round's best
    epoch) and the task's saved state loaded, in eval mode."""
    out = Path(out_dir)
    if not (out / "metrics.json").exists() and (out / FAILED).exists():
        raise RuntimeError(f"{out}: this run failed: {read_json(out / FAILED)['message']}")
    cfg = TrainConfig.from_dict(read_json(out / "config.json", REMEDY["config.json"]))
    if device is not None:
        cfg = cfg.replace(device=device)
    run = prepare_run(cfg)
    metrics = read_json(out / "metrics.json", REMEDY["metrics.json"])
    run.load_weights(out / metrics.get("weights", "best.pt"))
    run.task.load_state_dict(read_json(out / "task.json", REMEDY["task.json"]))
    run.model.eval()  # prepare_run put it on the device, in its layout; loading keeps both
    return run
