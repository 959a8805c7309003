"""One training loop for every paper; the paper-specific part is a small task object."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..data import Split
from ..data.batches import rank_seed
from ..io import atomic_torch_save, atomic_write_text, torch_load
from ..tasks import Outputs, Task
from .config import TrainConfig
from .distributed import Context, broadcast_buffers, gather_shards, sync_batchnorm, wrap


class NonFiniteLossError(FloatingPointError):
    """Training produced a nan or inf loss; the message says where."""


class DivergedLossError(FloatingPointError):
    """An epoch's mean training loss grew far past the first epoch's; the message has the losses."""


# The first epoch's mean is about the loss of the barely trained model, which training then
# lowers; no loss here adds terms during a run, and each curriculum round starts its own history.
# A mean 100 times the first's is the weights running away, not noise or a plateau, and its finite
# numbers would otherwise be trained on and reported. A tighter factor could stop a run whose loss
# starts near 0 (fine-tuning from good weights) and rises for a while under its warm-up.
DIVERGENCE_FACTOR = 100.0


def check_divergence(task: Task, losses: list[float], cfg: TrainConfig) -> None:
    """Raise :class:`DivergedLossError` if the last epoch mean of ``losses`` (one per epoch,
    from the first) is more than :data:`DIVERGENCE_FACTOR` times the first. A first mean that
    is not positive gives no scale to compare with and is not checked."""
    first, last = losses[0], losses[-1]
    if len(losses) > 1 and first > 0 and last > DIVERGENCE_FACTOR * first:
        seen = ", ".join(f"{loss:.4g}" for loss in losses)
        raise DivergedLossError(
            f"{task.name} task's loss ({type(task.loss).__name__}) diverged: its epoch "
            f"{len(losses)} mean {last:.4g} is more than {DIVERGENCE_FACTOR:g}x epoch 1's "
            f"{first:.4g} (epoch means: {seen}); lower the learning rate (lr {cfg.lr}, "
            f"backbone_lr {cfg.backbone_lr})")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether the device has bf16 arithmetic: CUDA, or a CPU with AVX512-BF16 or AMX.

    On such a CPU (2-core AMD EPYC, ``reports/bench/``) bf16 autocast trained resnet10t 1.7x
    faster and MobileNetV2 at most 1.2x. CPUs without it would emulate bf16; that was not
    measured, and they keep fp32.
    """
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported()
                                     or torch.cpu._is_amx_tile_supported())


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast where the device has bf16 arithmetic (:func:`native_bf16`), else nothing."""
    if bf16 and native_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """``cfg.channels_last``, or where it is None the layout measured faster on the device:
    channels_last on CPU (oneDNN: MobileNetV2 trained 1.2x and resnet10t 1.3x faster at
    128 px in bf16, ``reports/bench/``), NCHW on CUDA (TResNet is reported slower
    in channels_last; the default stays NCHW until the GPU A/B says otherwise)."""
    return device.type == "cpu" if cfg.channels_last is None else cfg.channels_last


def _gather(chunks: list):
    """One output from per-batch outputs: tensors concatenated, lists chained, dicts per key."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, dict):
        return {key: _gather([c[key] for c in chunks]) for key in first}
    if isinstance(first, list):
        return [item for chunk in chunks for item in chunk]
    raise TypeError(f"outputs must be tensors, lists or dicts of them, got {type(first).__name__}")


@torch.inference_mode()
def predict(model: nn.Module, step: Callable[[nn.Module, torch.Tensor], Outputs], batches, *,
            bf16: bool = True) -> Outputs:
    """``step(model, images)`` (e.g. a task's ``predict_step``) over ``batches`` in their order,
    gathered into one output, with the model in eval mode. ``step`` sees the images only:
    nothing else of a batch (labels, captions) can leak into a prediction. Batches sharded
    over ranks (``batches.world_size > 1``) give every rank the whole split's output."""
    was_training = model.training
    model.eval()
    chunks = []
    precision = autocast(batches.device, bf16)  # reusable: entered once per batch
    for batch in batches:
        with precision:
            chunks.append(step(model, batch["image"]))
    model.train(was_training)
    if getattr(batches, "world_size", 1) > 1:
        return gather_shards(_gather(chunks), batches.num_samples, batches.world_size, batches.device)
    return _gather(chunks)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The backbone at ``cfg.backbone_lr`` (if set; 0 leaves it out, frozen) and the rest at ``cfg.lr``."""
    backbone = getattr(model, "backbone", None)
    if cfg.backbone_lr is None or backbone is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
    inside = {id(p) for p in backbone.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in inside and p.requires_grad], "lr": cfg.lr}]
    if cfg.backbone_lr > 0:
        groups.append({"params": list(backbone.parameters()), "lr": cfg.backbone_lr})
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Stepped after every optimizer step. OneCycle peaks at each group's own learning rate."""
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        if cfg.pct_start * total_steps == 1:  # OneCycleLR would divide by zero at the first step
            raise ValueError(f"pct_start {cfg.pct_start} of {total_steps} steps is a one-step warm-up, "
                             "which OneCycleLR cannot schedule; change pct_start or epochs")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
            pct_start=cfg.pct_start)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs * steps_per_epoch,
                                               gamma=cfg.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _run_name(out: Path) -> str:
    """The folder's place under ``runs/`` (paper/dataset/variant in a grid), else its name."""
    parts = out.parts
    if "runs" not in parts[:-1]:
        return out.name
    return "/".join(parts[len(parts) - parts[::-1].index("runs"):])


def fit(model: nn.Module, task: Task, train_batches, val_batches, val_split: Split, cfg: TrainConfig,
        out_dir: str | Path, *, ctx: Context | None = None) -> list[dict]:
    """Train ``model`` for ``cfg.epochs`` with ``task``, scoring ``val_batches`` (the
    ``cfg.selection_split``: validation by default) after every epoch.

    Writes ``history.csv`` (the scored split's metrics as ``<selection_split>_<metric>``),
    ``best.pt`` (the weights of the epoch with the best ``task.selection`` metric on that
    split; with the default "val" the test split is never looked at) and
    ``checkpoint.pt`` (everything needed to resume) into ``out_dir``, each atomically
    at the end of an epoch. Called again on the same ``out_dir``, it resumes after the
    last finished epoch and ends with the same weights as an uninterrupted run. An epoch whose
    mean loss is far past the first's stops training (:func:`check_divergence`) before its
    checkpoint is written.
    Under several processes (``ctx``, see :mod:`annotlib.train.distributed`) the model
    trains in DistributedDataParallel and only rank 0 writes. Returns the per-epoch history.
    """
    out = Path(out_dir)
    ctx = ctx or Context(device=train_batches.device)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    device = train_batches.device
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_batches))
    metric, mode = task.selection
    prefix = cfg.selection_split
    select = f"{prefix}_{metric}"
    history: list[dict] = []
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch_load(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    step_model = wrap(model, ctx, sync_batchnorm(cfg.sync_bn, model, train_batches.batch_size, ctx))
    if cfg.compile:
        step_model = torch.compile(step_model)
    # One plain line per epoch, not a bar: it reads the same in a terminal, a log and the
    # executed notebook, which papermill streams to the grid runner's terminal.
    name, first, fit_started = _run_name(out), len(history), time.perf_counter()
    report = ctx.is_main and cfg.progress
    if report and first < cfg.epochs:
        print(f"{name}: training epochs {first + 1} to {cfg.epochs}", flush=True)

    for epoch in range(first, cfg.epochs):
        # Dropout draws depend on the epoch (resumable) and the rank (each its own masks) only.
        torch.manual_seed(rank_seed(cfg.seed * 1000 + epoch, ctx.rank))
        train_batches.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        losses = train_epoch(step_model, task, train_batches, optimizer, scheduler, cfg, epoch)
        broadcast_buffers(model, ctx)
        seconds = time.perf_counter() - started
        if ctx.distributed:  # the mean over every rank's shard: each rank takes the same decision
            total = torch.tensor(losses, dtype=torch.float64, device=device)
            dist.all_reduce(total)
            losses = total.item() / ctx.world_size
        check_divergence(task, [r["train_loss"] for r in history] + [losses], cfg)
        outputs = predict(model, task.predict_step, val_batches, bf16=cfg.bf16)
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_loss": losses,
               **{f"{prefix}_{k}": v for k, v in task.validation_metrics(outputs, val_split).items()},
               "train_seconds": round(seconds, 3),
               "train_img_per_s": round(len(train_batches) * train_batches.batch_size * ctx.world_size
                                        / seconds, 2)}
        if select not in row:
            raise KeyError(f"{task.name}: the selection metric {metric!r} is not among its validation "
                           f"metrics ({', '.join(k[len(prefix) + 1:] for k in row if k.startswith(prefix + '_'))})")
        seen = [r[select] for r in history]
        improved = not seen or (row[select] > max(seen) if mode == "max" else row[select] < min(seen))
        history.append(row)
        if ctx.is_main:
            if improved:
                atomic_torch_save(model.state_dict(), out / "best.pt")
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "history": history}, checkpoint)
            _write_history(out / "history.csv", history)
        if report:
            eta = (time.perf_counter() - fit_started) / (epoch + 1 - first) * (cfg.epochs - epoch - 1)
            print(f"{name}  epoch {epoch + 1}/{cfg.epochs}  train_loss {losses:.4f}  {select} "
                  f"{row[select]:.4f}  {row['train_img_per_s']:.0f} img/s  ETA {_duration(eta)}", flush=True)
        ctx.barrier()  # every rank sees this epoch's files before any goes on
    if report and history and first < cfg.epochs:
        best = (max if mode == "max" else min)(history, key=lambda r: r[select])
        print(f"{name}: trained in {_duration(time.perf_counter() - fit_started)}; best epoch "
              f"{best['epoch']}, {select} {best[select]:.4f}", flush=True)
    return history


def train_epoch(model, task, batches, optimizer, scheduler, cfg, epoch) -> float:
    """One epoch; returns the mean training loss. A non-finite loss stops training with
    the epoch, step, sample indices and loss name."""
    check_every = 20  # a host sync per check; on CUDA, checking every step would stall the queue
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    total = torch.zeros((), device=batches.device)
    precision = autocast(batches.device, cfg.bf16)  # reusable: entered once per step
    for step, batch in enumerate(batches):
        with precision:
            loss = task.training_step(model, batch).float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        pending.append((step, batch["index"], loss.detach()))
        if len(pending) == check_every or step == len(batches) - 1:
            losses = torch.stack([p[2] for p in pending])
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                at, idx_bad, value = pending[bad[0, 0].item()]
                raise NonFiniteLossError(
                    f"{task.name} task's loss ({type(task.loss).__name__}) is {value.item()} at epoch {epoch + 1}, step {at + 1} of "
                    f"{len(batches)}, batch sample indices {idx_bad.tolist()}")
            total += losses.sum()
            pending.clear()
    return total.item() / len(batches)
