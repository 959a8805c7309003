"""One training loop for every paper; the paper-specific part is a small task object."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..io import atomic_torch_save, atomic_write_text
from .config import TrainConfig
from .distributed import Context, wrap


class NonFiniteLossError(FloatingPointError):
    """Training produced a nan or inf loss; the message says where."""


class Task(Protocol):
    """How a batch becomes model outputs, a loss, and validation numbers."""

    name: str

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def validation_metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, float]: ...


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


@torch.inference_mode()
def predict(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
            batches, *, bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated float32 ``forward(model, x, y)`` and targets of ``batches``, in their order,
    with the model in eval mode (``forward`` is e.g. a task's ``forward``)."""
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    precision = autocast(batches.device, bf16)  # reusable: entered once per batch
    for x, y, _ in batches:
        with precision:
            out = forward(model, x, y)
        outputs.append(out.float())
        targets.append(y)
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _write_history(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def fit(model: nn.Module, task: Task, train_batches, val_batches, cfg: TrainConfig,
        out_dir: str | Path, *, select: str = "val_mAP", ctx: Context | None = None) -> list[dict]:
    """Train ``model`` for ``cfg.epochs``, validating after every epoch.

    Writes ``history.csv``, ``best.pt`` (the weights of the epoch with the highest
    ``select`` on the validation split; the test split is never looked at) and
    ``checkpoint.pt`` (everything needed to resume) into ``out_dir``, each atomically
    at the end of an epoch. Called again on the same ``out_dir``, it resumes after the
    last finished epoch and ends with the same weights as an uninterrupted run.
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
    total_steps = cfg.epochs * len(train_batches)
    if cfg.pct_start * total_steps == 1:  # OneCycleLR would divide by zero at the first step
        raise ValueError(f"pct_start {cfg.pct_start} of {total_steps} steps is a one-step warm-up, "
                         "which OneCycleLR cannot schedule; change pct_start or epochs")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.pct_start)
    history: list[dict] = []
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    step_model = wrap(model, ctx)
    if cfg.compile:
        step_model = torch.compile(step_model)

    for epoch in range(len(history), cfg.epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout draws depend on the epoch only: resumable
        train_batches.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        losses = train_epoch(step_model, task, train_batches, optimizer, scheduler, cfg, epoch)
        seconds = time.perf_counter() - started
        outputs, targets = predict(step_model, task.forward, val_batches, bf16=cfg.bf16)
        row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_loss": losses,
               "val_loss": task.loss(outputs, targets).item(),
               **{f"val_{k}": v for k, v in task.validation_metrics(outputs, targets).items()},
               "train_seconds": round(seconds, 3),
               "train_img_per_s": round(len(train_batches) * train_batches.batch_size * ctx.world_size
                                        / seconds, 2)}
        improved = not history or row[select] > max(r[select] for r in history)
        history.append(row)
        if ctx.is_main:
            if improved:
                atomic_torch_save(model.state_dict(), out / "best.pt")
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "history": history}, checkpoint)
            _write_history(out / "history.csv", history)
        ctx.barrier()  # every rank sees this epoch's files before any goes on
    return history


def train_epoch(model, task, batches, optimizer, scheduler, cfg, epoch) -> float:
    """One epoch; returns the mean training loss. A non-finite loss stops training with
    the epoch, step, sample indices and loss name."""
    from tqdm.auto import tqdm
    check_every = 20  # a host sync per check; on CUDA, checking every step would stall the queue
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    total = torch.zeros((), device=batches.device)
    bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
               leave=False)
    precision = autocast(batches.device, cfg.bf16)  # reusable: entered once per step
    for step, (x, y, idx) in enumerate(batches):
        with precision:
            outputs = task.forward(model, x, y)
        loss = task.loss(outputs.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        pending.append((step, idx, loss.detach()))
        if len(pending) == check_every or step == len(batches) - 1:
            losses = torch.stack([p[2] for p in pending])
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                at, idx_bad, value = pending[bad[0, 0].item()]
                raise NonFiniteLossError(
                    f"{task.name} loss is {value.item()} at epoch {epoch + 1}, step {at + 1} of "
                    f"{len(batches)}, batch sample indices {idx_bad.tolist()}")
            total += losses.sum()
            bar.update(len(pending))
            if cfg.progress:
                bar.set_postfix(loss=f"{losses.mean().item():.4f}")
            pending.clear()
    bar.close()
    return total.item() / len(batches)
