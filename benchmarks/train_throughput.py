"""Training throughput of annotlib against its own ceiling and against the reference loader.

Three training measurements in one process, with the same model, loss, batch size,
resolution and device (images per second, warm-up steps excluded):

- S, the ceiling: forward + backward + Adam step on one static batch already on the device,
  with the training loop's loss and autocast; no data work at all.
- T, annotlib's loop: ``annotlib.train.loop.train_epoch`` (the body of ``fit``) fed by
  ``DeviceBatches`` over ``cached_images`` of the first ``steps x batch`` training images,
  with random horizontal and vertical flips (P0's augmentation).
- R, the reference loop as P0's code does it: a Dataset that opens every JPEG with PIL on
  every access, torchvision Resize + flips + ToTensor + Normalize, a DataLoader with two
  workers and shuffling, fp32, NCHW, eager.

It also times inference (``predict`` over evaluation ``DeviceBatches``) and reports T/S, T/R,
inference/T, the share of T's step time spent producing batches, peak memory and, on CUDA,
model FLOP utilisation. ``--ab`` measures S and T with channels_last, torch.compile and bf16
autocast (where the device has bf16 arithmetic; elsewhere the loop keeps fp32) flipped one at a
time from the base config, which is the loop's default for the device unless set. On a GPU, at P0's
settings::

    python benchmarks/train_throughput.py --dataset corel-5k --backbone tresnet_m \\
        --image-size 448 --ab

Quick CPU run (numbers are only meaningful on an otherwise idle machine)::

    python benchmarks/train_throughput.py --dataset corel-5k --backbone mobilenetv2_100 \\
        --image-size 128 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count
from torchvision import transforms

from annotlib.data import DeviceBatches, cached_images, load_split
from annotlib.io import write_json
from annotlib.losses import create_loss
from annotlib.models import Annotator, create_model
from annotlib.tasks import MultiLabelTask
from annotlib.train import TrainConfig
from annotlib.train.loop import (
    autocast,
    make_optimizer,
    native_bf16,
    predict,
    resolve_device,
    train_epoch,
    use_channels_last,
)

RESULTS = Path(__file__).resolve().parents[1] / "reports" / "bench"
# (T/S, T/R) goals: on CUDA for tresnet_m at 448 px, on CPU for a small backbone at 128 px.
GOALS = {"cuda": (0.90, 5.0), "cpu": (0.8, 1.5)}
INFERENCE_GOAL = 2.0  # inference img/s over T img/s
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # any values: speed does not care


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: max allocated since the last reset; CPU: the process's max RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Setup:
    """What every measurement shares: the data, the config and how to build a fresh model."""

    def __init__(self, args):
        self.args, self.device = args, resolve_device(args.device)
        split = load_split(args.dataset, "train", args.data_root)
        self.num_images = args.steps * args.batch_size
        needed = (args.warmup + args.steps) * args.batch_size  # R reads warm-up batches too
        if needed > len(split):
            raise SystemExit(f"{args.dataset} train has {len(split)} images; "
                             f"(warmup + steps) x batch needs {needed}")
        self.paths, self.labels = split.image_paths[:needed], split.labels[:needed]
        self.num_classes = split.num_classes
        self.images = cached_images(self.paths[:self.num_images], args.image_size)
        cfg = TrainConfig(dataset=args.dataset, backbone=args.backbone,
                          image_size=args.image_size, batch_size=args.batch_size,
                          loss=args.loss, device=str(self.device), epochs=1, progress=False,
                          channels_last=args.channels_last, compile=args.compile)
        # The options as the loop resolves them on this device, so that the A/B flips what runs.
        self.cfg = cfg.replace(channels_last=use_channels_last(cfg, self.device),
                               bf16=args.bf16 and native_bf16(self.device))
        loss = create_loss(self.cfg.loss, **self.cfg.loss_kwargs)
        self.task = MultiLabelTask(loss)

    def model(self, cfg: TrainConfig) -> tuple[Annotator, torch.nn.Module]:
        """A freshly initialised model on the device, and the module to step (compiled or not)."""
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.head, cfg.backbone, num_classes=self.num_classes, **cfg.head_kwargs)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        return model, torch.compile(model) if cfg.compile else model

    def batches(self, cfg: TrainConfig, count: int, train: bool = True,
                batch_size: int | None = None) -> DeviceBatches:
        """DeviceBatches over the first ``count`` cached images, as ``AnnotationRun.batches``."""
        return DeviceBatches(self.images[:count], {"labels": self.labels[:count]}, device=self.device,
                             mean=MEAN, std=STD,
                             batch_size=batch_size or cfg.batch_size, train=train,
                             hflip=cfg.hflip, vflip=cfg.vflip, crop_scale=cfg.crop_scale,
                             channels_last=cfg.channels_last, seed=cfg.seed)


def result(images: int, seconds: float, device: torch.device, **extra) -> dict:
    return {"img_per_s": images / seconds, "seconds": seconds, "images": images,
            "peak_mem_mib": peak_memory_mib(device), **extra}


def measure_static(setup: Setup, cfg: TrainConfig) -> dict:
    """S: forward + backward + Adam step on one static device batch, repeated."""
    args, device = setup.args, setup.device
    model, step_model = setup.model(cfg)
    optimizer = make_optimizer(model, cfg)
    batch = next(iter(setup.batches(cfg, args.batch_size)))

    def step():
        with autocast(device, cfg.bf16):
            loss = setup.task.training_step(step_model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_steps(step, args, device)


def timed_steps(step, args, device) -> dict:
    """img/s of ``args.steps`` calls of ``step`` after ``args.warmup`` untimed ones."""
    for _ in range(args.warmup):
        step()
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return result(args.steps * args.batch_size, time.perf_counter() - start, device)


class TimedBatches:
    """DeviceBatches that time how long each batch takes to produce (synchronised on CUDA)."""

    def __init__(self, batches: DeviceBatches):
        self.inner, self.device, self.batch_size = batches, batches.device, batches.batch_size
        self.data_seconds = 0.0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        iterator = iter(self.inner)
        while True:
            sync(self.device)  # the previous step's work is not data time
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            sync(self.device)
            self.data_seconds += time.perf_counter() - start
            yield batch


def measure_loop(setup: Setup, cfg: TrainConfig, data_share: bool = False) -> dict:
    """T: annotlib's ``train_epoch`` over DeviceBatches of the cached images, after a warm-up
    epoch of ``warmup`` batches. With ``data_share``, one more epoch with a host sync around
    every batch gives the share of step time spent producing batches."""
    args, device = setup.args, setup.device
    model, step_model = setup.model(cfg)
    warm = setup.batches(cfg, args.warmup * args.batch_size)
    timed = setup.batches(cfg, setup.num_images)
    optimizer = make_optimizer(model, cfg)
    epochs = [warm, timed] + ([TimedBatches(setup.batches(cfg, setup.num_images))]
                              if data_share else [])
    # As fit's schedule, but long enough that no tiny run ends a phase at step 0 (the learning
    # rate does not change the speed).
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=10 * sum(len(b) for b in epochs),
        pct_start=cfg.pct_start)
    model.train()
    x = next(iter(timed))["image"]
    layout = "channels_last" if not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else "NCHW"
    train_epoch(step_model, setup.task, warm, optimizer, scheduler, cfg, 0)
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    train_epoch(step_model, setup.task, timed, optimizer, scheduler, cfg, 1)
    sync(device)
    out = result(len(timed) * args.batch_size, time.perf_counter() - start, device,
                 input_layout=layout)
    if data_share:
        start = time.perf_counter()
        train_epoch(step_model, setup.task, epochs[2], optimizer, scheduler, cfg, 2)
        sync(device)
        out["data_share"] = epochs[2].data_seconds / (time.perf_counter() - start)
    return out


def measure_inference(setup: Setup, cfg: TrainConfig) -> dict:
    """``predict`` (eval mode, inference mode, the loop's autocast) over evaluation batches."""
    device, eval_size = setup.device, min(setup.args.eval_batch_size, setup.num_images)
    count = setup.num_images // eval_size * eval_size  # whole batches: one shape
    _, step_model = setup.model(cfg)
    predict(step_model, setup.task.predict_step, setup.batches(cfg, eval_size, False, eval_size),
            bf16=cfg.bf16)
    batches = setup.batches(cfg, count, False, eval_size)
    reset_peak_memory(device)
    sync(device)
    start = time.perf_counter()
    predict(step_model, setup.task.predict_step, batches, bf16=cfg.bf16)
    sync(device)
    return result(count, time.perf_counter() - start, device, batch_size=eval_size)


class ReferenceDataset(torch.utils.data.Dataset):
    """P0's loader: every access opens and decodes the JPEG, then resizes, flips, normalises."""

    def __init__(self, paths, labels, size: int, mean, std):
        self.paths, self.labels = paths, labels
        self.transform = transforms.Compose([
            transforms.Resize((size, size)), transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(), transforms.ToTensor(),
            transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def measure_reference(setup: Setup) -> dict:
    """R: the reference DataLoader (2 workers, shuffled) and an fp32, NCHW, eager step."""
    args, device = setup.args, setup.device
    cfg = setup.cfg.replace(bf16=False, channels_last=False, compile=False)
    model, _ = setup.model(cfg)
    optimizer = make_optimizer(model, cfg)
    dataset = ReferenceDataset(setup.paths, setup.labels, args.image_size, MEAN, STD)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=2, drop_last=True)
    model.train()
    batches = iter(loader)

    def step():
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = setup.task.loss(model(x), y.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_steps(step, args, device)  # the warm-up steps also start the workers


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation,
                        transposed, output_padding, groups, output_mask, **kwargs) -> int:
    """Convolution backward FLOPs: each gradient costs one forward. Torch's own formula (2.14)
    ignores ``groups`` for the weight gradient, counting depthwise convolutions ``groups``
    times over (7x too much for MobileNetV2)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flops_per_image(setup: Setup) -> float:
    """Forward + backward FLOPs of one training image (FlopCounterMode: matmuls and convs)."""
    cfg = setup.cfg.replace(compile=False)
    model, _ = setup.model(cfg)
    batch = next(iter(setup.batches(cfg, setup.args.batch_size)))
    fixed = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=fixed) as counter:
        with autocast(setup.device, cfg.bf16):
            setup.task.training_step(model, batch).backward()
    return counter.get_total_flops() / len(batch["image"])


AB_OPTIONS = ("channels_last", "compile", "bf16")


def ab_options(device: torch.device, asked=AB_OPTIONS) -> list[str]:
    """The asked options that the device can flip (bf16 only where it has bf16 arithmetic)."""
    return [o for o in AB_OPTIONS if o in asked and (o != "bf16" or native_bf16(device))]


def measure_ab(setup: Setup, base: dict) -> dict:
    """S and T with each option flipped from the base config; a failing arm is reported."""
    out = {}
    for option in ab_options(setup.device, setup.args.ab_options):
        value = getattr(setup.cfg, option)
        arms = {value: base}
        try:
            cfg = setup.cfg.replace(**{option: not value})
            arms[not value] = {"S": measure_static(setup, cfg), "T": measure_loop(setup, cfg)}
        except Exception as err:  # noqa: BLE001 - e.g. torch.compile without a working compiler
            print(f"{option}={not value} failed: {type(err).__name__}: {err}")
            arms[not value] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            if option == "compile":
                torch._dynamo.reset()
        out[option] = {"on": arms[True], "off": arms[False]}
    return out


def print_report(report: dict) -> None:
    env, m, r = report["environment"], report["measurements"], report["ratios"]
    print(f"\n{env['device']} ({env['device_name']}), torch {env['torch']}, {env['threads']} "
          f"threads, load average {env['load_start']:.2f} -> {env['load_end']:.2f}")
    print(f"{report['config']['backbone']} at {report['config']['image_size']} px, batch "
          f"{report['config']['batch_size']}, {report['config']['steps']} steps, "
          f"{report['config']['options']}")
    memory = "max allocated" if env["device"] == "cuda" else "process max RSS so far"
    print(f"{'':<28}{'img/s':>10}{'peak MiB':>10}   (peak: {memory})")
    names = {"S": "S static batch (ceiling)", "T": "T annotlib loop",
             "R": "R reference loader", "inference": "inference (predict)"}
    for key, name in names.items():
        print(f"{name:<28}{m[key]['img_per_s']:>10.1f}{m[key]['peak_mem_mib']:>10.0f}")
    goal_s, goal_r = report["goals"]["T/S"], report["goals"]["T/R"]
    print("goals are set for " + ("tresnet_m at 448 px" if env["device"] == "cuda"
                                  else "a small backbone at 128 px"))
    for label, value, goal in [("T/S", r["T/S"], goal_s), ("T/R", r["T/R"], goal_r),
                               ("inference/T", r["inference/T"], INFERENCE_GOAL)]:
        verdict = "ok" if value >= goal else "MISSED"
        print(f"{label:<14}{value:>7.2f}   goal >= {goal:<5} {verdict}")
    print(f"data share of T's step time: {m['T']['data_share']:.1%} "
          f"(T's input layout: {m['T']['input_layout']})")
    print(f"forward+backward: {report['gflops_per_image']:.2f} GFLOP per image; "
          f"MFU: {'n/a' if report['mfu'] is None else format(report['mfu'], '.1%')}")
    for option, arms in report.get("ab", {}).items():
        print(f"\n{option:<16}{'on':>10}{'off':>10}   faster")
        for key in ("S", "T"):
            on, off = (arms[a].get(key, {}).get("img_per_s") for a in ("on", "off"))
            if on is None or off is None:
                print(f"{key:<16}{'failed, see above':>20}")
            else:
                print(f"{key:<16}{on:>10.1f}{off:>10.1f}   {'on' if on > off else 'off'}")
    if "ab" in report and "bf16" in report["config"]["ab_options"] and "bf16" not in report["ab"]:
        print("\nbf16: not measured (this device has no bf16 arithmetic; the loop keeps fp32)")


def describe_options(cfg: TrainConfig) -> str:
    return (f"{'bf16 autocast' if cfg.bf16 else 'fp32'}, "
            f"{'channels_last' if cfg.channels_last else 'NCHW'}, "
            f"{'compiled' if cfg.compile else 'eager'}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="corel-5k", choices=["corel-5k", "synthetic"])
    parser.add_argument("--data-root", default=None, help="default: $ANNOTLIB_DATA_ROOT/...")
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--loss", default="unsymmetric")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="base config's layout (default: the loop's default for the device)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="base config: bf16 autocast where the device has bf16 arithmetic")
    parser.add_argument("--compile", action="store_true", help="base config: torch.compile")
    parser.add_argument("--ab", action="store_true", help="A/B channels_last, compile, bf16")
    parser.add_argument("--ab-options", nargs="+", choices=AB_OPTIONS, default=AB_OPTIONS,
                        help="--ab: only these (e.g. compile alone, in a run of its own, as its "
                             "compilation takes minutes)")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="the device's peak TFLOP/s for MFU (default: bf16 on an H100)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if tuple(args.ab_options) != AB_OPTIONS and not args.ab:
        parser.error("--ab-options applies to --ab only")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    setup = Setup(args)
    device, cfg = setup.device, setup.cfg
    m = {"S": measure_static(setup, cfg), "T": measure_loop(setup, cfg, data_share=True),
         "R": measure_reference(setup), "inference": measure_inference(setup, cfg)}
    flops = flops_per_image(setup)
    t = m["T"]["img_per_s"]
    report = {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "options": describe_options(cfg)},
        "measurements": m,
        "ratios": {"T/S": t / m["S"]["img_per_s"], "T/R": t / m["R"]["img_per_s"],
                   "inference/T": m["inference"]["img_per_s"] / t},
        "goals": dict(zip(("T/S", "T/R"), GOALS["cuda" if device.type == "cuda" else "cpu"])),
        "gflops_per_image": flops / 1e9,
        "mfu": flops * t / (args.peak_tflops * 1e12) if device.type == "cuda" else None,
    }
    if args.ab:
        report["ab"] = measure_ab(setup, {"S": m["S"], "T": m["T"]})
    report["environment"] = {"device": device.type, "device_name": device_name(device),
                             "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "load_start": load_start, "load_end": os.getloadavg()[0]}
    print_report(report)
    path = args.json or RESULTS / f"train_throughput-{device.type}.json"
    write_json(path, report)
    print(f"\nwritten to {path}")
    return report


if __name__ == "__main__":
    main()
