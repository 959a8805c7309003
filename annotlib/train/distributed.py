"""Data-parallel training under ``torchrun``: the same code runs with one process or N.

``torchrun --nproc_per_node=N -m annotlib.train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on the CPU)
and gives each process its device. Each rank trains on its shard of every epoch with a
``batch_size / N`` share of the batch, so the global batch and the optimisation are those of
one process; each rank draws its own augmentations and dropout masks from a stream derived
from the run's seed and its rank (:func:`annotlib.data.batches.rank_seed`); batch norm is
synchronised across ranks where the per-rank batch is small (:func:`sync_batchnorm`).
Evaluation is sharded too: each rank predicts its share of the split, and every rank gets
all of it back in the split's order (:func:`gather_shards`). Only rank 0 writes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# Below this many samples per rank, per-rank batch statistics are noisy enough that batch
# norm is synchronised ("auto"); SyncBatchNorm costs a collective per layer, so larger
# per-rank batches keep their own statistics.
SYNC_BN_BELOW = 32


@dataclass(frozen=True)
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. decoding the image cache), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def setup(device: torch.device) -> Context:
    """The process's rank, world size and device; joins the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # Left to the interpreter's teardown, gloo's threads sometimes abort the process
        # ("terminate called without an active exception") after a finished run.
        atexit.register(dist.destroy_process_group)
    return Context(device, rank, world_size)


def current(device: torch.device) -> Context:
    """This process's place in the process group already joined (:func:`setup`), else alone."""
    if dist.is_available() and dist.is_initialized():
        return Context(device, dist.get_rank(), dist.get_world_size())
    return Context(device)


def sync_batchnorm(setting: str | bool, model: nn.Module, per_rank_batch: int, ctx: Context) -> bool:
    """Whether training converts ``model``'s batch norm to SyncBatchNorm (config ``sync_bn``).

    Only with several processes and a model that has batch norm. "auto": when the per-rank
    batch is below :data:`SYNC_BN_BELOW` and the devices are GPUs (PyTorch synchronises
    batch norm on GPUs only; CPU ranks keep their own statistics). ``True`` on CPUs is an error.
    """
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if setting is False or not ctx.distributed or not has_bn:
        return False
    if setting == "auto":
        return per_rank_batch < SYNC_BN_BELOW and ctx.device.type == "cuda"
    if ctx.device.type != "cuda":
        raise ValueError(f"sync_bn: SyncBatchNorm needs CUDA devices, the ranks run on {ctx.device.type}; "
                         'set sync_bn to "auto" or false')
    return True


def wrap(model: nn.Module, ctx: Context, sync_bn: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, its batch norm
    layers made SyncBatchNorm first if ``sync_bn`` (in place: the state dict keeps its keys)."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. DDP sends them at the
    start of each step only, so after an epoch each rank holds its last batch's update; this
    makes every rank evaluate the model that rank 0 saves."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_tensors(fn, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_tensors(fn, item) for item in value]
    return value


def _interleave(shards: list, n: int):
    """The first ``n`` rows of ``shards[0][0], shards[1][0], ..., shards[0][1], ...``."""
    first = shards[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(shards, 1).flatten(0, 1)[:n]
    if isinstance(first, dict):
        return {key: _interleave([shard[key] for shard in shards], n) for key in first}
    if isinstance(first, list):
        return [item for row in zip(*shards, strict=True) for item in row][:n]
    raise TypeError(f"outputs must be tensors, lists or dicts of them, got {type(first).__name__}")


def gather_shards(output, n: int, world_size: int, device: torch.device):
    """Every rank's ``output`` on its shard of an ``n``-sample split (rank ``r`` holding
    samples ``r, r + N, r + 2N, ...`` of the split wrapped to a multiple of N, as
    :class:`~annotlib.data.DeviceBatches` shards it), joined on every rank in the split's
    order with the wrapped padding cut off; tensors end on ``device``."""
    shards = [None] * world_size
    dist.all_gather_object(shards, _map_tensors(lambda t: t.cpu(), output))
    return _map_tensors(lambda t: t.to(device), _interleave(shards, n))
