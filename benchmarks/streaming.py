"""Streamed batches: peak memory on a cache larger than the memory budget, and their speed.

(a) Peak resident memory (VmHWM) of one training epoch and of one evaluation pass over a
    synthetic ``--images x 224 x 224 x 3`` uint8 cache (40,000 images: 6.0 GB). The cache is
    written directly as the ``.npy`` file that ``cached_images`` memory-maps (structured
    pixels, no decoding), and ``DeviceBatches`` reads it as it reads any cache. Each pass runs
    in a fresh process, so its peak is its own; the model is one strided convolution, so the
    pass is the data path (read, flips, normalisation) and not the model. Goal: < 3 GB.
(b) Training steps/s of a small backbone on the Corel-5k cache at 128 px, streamed
    (``resident=False``) against the whole split in memory (``resident=True``), measured in
    turns in one process and printed as a ratio. Goal: >= 0.9.

    python benchmarks/streaming.py --data-root /path/to/Corel-5k
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from annotlib.data import DeviceBatches, cached_images, load_split
from annotlib.data.batches import fits_in_memory
from annotlib.losses import create_loss
from annotlib.models import create_model
from annotlib.tasks import MultiLabelTask
from annotlib.train import TrainConfig
from annotlib.train.loop import autocast, predict, resolve_device, train_epoch

RSS_GOAL_GB, RATIO_GOAL = 3.0, 0.9
CLASSES = 20


def peak_rss() -> int:
    """This process's peak resident set in bytes (VmHWM: anonymous and mapped file pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_cache(path: Path, count: int, size: int) -> None:
    """``count x size x size x 3`` uint8 as a .npy file, written a block at a time through the
    file (not a map, so this process's memory stays one block): per-image gradients and stripes."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "|u1", "fortran_order": False,
                                                    "shape": (count, size, size, 3)})
        y, x = (v[None, :, :, None].astype(np.uint16) for v in np.mgrid[0:size, 0:size])
        channel = np.arange(3, dtype=np.uint16) * 40
        for start in range(0, count, 64):
            k = np.arange(start, min(start + 64, count), dtype=np.uint16)[:, None, None, None]
            block = x * (1 + k % 7) + y * (k % 5) + channel + 30 * ((x // (4 + k % 9)) % 2)
            file.write(block.astype(np.uint8).tobytes())  # uint16 wraps; the low byte is the pixel


def rss_pass(cache: Path, phase: str, batch_size: int) -> dict:
    """One training epoch or one evaluation pass over ``cache``, in this process."""
    device = torch.device("cpu")
    images = np.load(cache, mmap_mode="r")
    labels = torch.from_numpy(np.arange(len(images))[:, None] % 2 == np.arange(CLASSES) % 2).to(torch.int8)
    model = nn.Sequential(nn.Conv2d(3, 8, 16, stride=16), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, CLASSES))
    train = phase == "train"
    batches = DeviceBatches(images, {"labels": labels} if train else {}, batch_size=batch_size, device=device,
                            train=train, hflip=True, vflip=True, seed=0)
    before = peak_rss()
    started = time.perf_counter()
    if train:
        cfg = TrainConfig(epochs=1, progress=False)
        task = MultiLabelTask(create_loss("bce"))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        train_epoch(model, task, batches, optimizer, scheduler, cfg, 0)
    else:
        predict(model, lambda m, x: m(x), batches, bf16=False)
    return {"phase": phase, "resident": batches.resident, "images": len(images), "split_gb": images.nbytes / 1e9,
            "batches": len(batches), "seconds": time.perf_counter() - started,
            "peak_rss_gb": peak_rss() / 1e9, "peak_rss_before_gb": before / 1e9}


def measure_rss(args) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        cache = Path(folder) / "synthetic.npy"
        write_cache(cache, args.images, 224)
        results = []
        for phase in ("train", "eval"):
            done = subprocess.run([sys.executable, __file__, "--rss-pass", phase, "--cache", str(cache),
                                   "--batch-size", str(args.rss_batch_size)],
                                  check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        return results


def train_steps(model, task, batches: DeviceBatches, optimizer, steps: int, warmup: int, bf16: bool) -> float:
    """Training steps per second over ``steps`` steps after ``warmup`` untimed ones."""
    device = batches.device
    precision = autocast(device, bf16)
    started = None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        with precision:
            loss = task.training_step(model, batch).float()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i + 1 == warmup + steps:
            break  # also ends the streamed batches' prefetch thread early
    else:
        raise SystemExit(f"{len(batches)} batches per epoch; warmup + steps needs {warmup + steps}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - started)


def measure_speed(args) -> dict:
    device = resolve_device(args.device)
    split = load_split("corel-5k", "train", args.data_root)
    images = cached_images(split.image_paths, 128)
    task = MultiLabelTask(create_loss("bce"))
    torch.manual_seed(0)
    model = create_model("multilabel", args.backbone, num_classes=split.num_classes).to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    made = {resident: DeviceBatches(images, {"labels": split.labels}, batch_size=args.batch_size, device=device,
                                    train=True, hflip=True, vflip=True, channels_last=device.type == "cpu",
                                    resident=resident)
            for resident in (True, False)}
    rates = {True: [], False: []}
    for turn in range(args.turns):  # in turns, so that a busy spell of the machine hits both
        for resident in ((True, False) if turn % 2 == 0 else (False, True)):
            made[resident].set_epoch(turn)
            rates[resident].append(train_steps(model, task, made[resident], optimizer, args.steps, args.warmup,
                                               bf16=True))
    resident, streamed = statistics.median(rates[True]), statistics.median(rates[False])
    return {"device": str(device), "backbone": args.backbone, "batch_size": args.batch_size,
            "split_gb": images.nbytes / 1e9, "resident_steps_per_s": rates[True],
            "streamed_steps_per_s": rates[False], "ratio": streamed / resident,
            # each turn's two measurements are adjacent in time: their ratio sees the same load
            "paired_ratio": statistics.median(s / r for s, r in zip(rates[False], rates[True], strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40_000, help="(a) synthetic cache size at 224 px")
    parser.add_argument("--rss-batch-size", type=int, default=256)
    parser.add_argument("--workdir", default=None, help="(a) where the synthetic cache is written (default: temp)")
    parser.add_argument("--data-root", default=None, help="(b) the Corel-5k folder (default: $ANNOTLIB_DATA_ROOT)")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip", choices=("rss", "speed"), default=None)
    parser.add_argument("--rss-pass", choices=("train", "eval"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_pass:
        print(json.dumps(rss_pass(Path(args.cache), args.rss_pass, args.rss_batch_size)))
        return
    if args.skip != "rss":
        print(f"(a) peak RSS over a {args.images} x 224 x 224 x 3 uint8 cache "
              f"({args.images * 224 * 224 * 3 / 1e9:.2f} GB; kept resident by the budget rule: "
              f"{fits_in_memory(args.images * 224 * 224 * 3, torch.device('cpu'))})")
        for row in measure_rss(args):
            verdict = "ok" if row["peak_rss_gb"] < RSS_GOAL_GB else "OVER"
            print(f"    {row['phase']:5s}  resident={row['resident']}  {row['batches']} batches in "
                  f"{row['seconds']:.0f} s  peak RSS {row['peak_rss_gb']:.2f} GB (before the pass "
                  f"{row['peak_rss_before_gb']:.2f} GB)  goal < {RSS_GOAL_GB:g} GB: {verdict}")
    if args.skip != "speed":
        row = measure_speed(args)
        print(f"(b) train steps/s, {row['backbone']} at 128 px, batch {row['batch_size']}, Corel-5k train "
              f"({row['split_gb']:.2f} GB) on {row['device']}, {args.turns} turns of {args.steps} steps:")
        print(f"    resident {[round(r, 3) for r in row['resident_steps_per_s']]}  "
              f"streamed {[round(r, 3) for r in row['streamed_steps_per_s']]}")
        print(f"    streamed / resident: of the medians {row['ratio']:.3f}, median of the turns' ratios "
              f"{row['paired_ratio']:.3f}  goal >= {RATIO_GOAL}: {'ok' if row['ratio'] >= RATIO_GOAL else 'UNDER'}")


if __name__ == "__main__":
    main()
