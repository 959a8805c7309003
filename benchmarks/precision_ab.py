"""Final test metrics of one run trained in bf16 autocast and in fp32, with a noise yardstick.

Three runs of the same config and seed that differ only in arithmetic:

- ``bf16``: bf16 autocast (the loss stays in fp32), the device's default memory layout;
- ``fp32``: the same without autocast;
- ``fp32`` in the other layout (channels_last <-> NCHW): the same fp32 maths summed in
  another order. Its distance from ``fp32`` is what any change of arithmetic moves the
  numbers by on this protocol, the yardstick for bf16's distance.

Prints test mAP, CF1 / OF1 / N+ at 0.5 and at the tuned thresholds, training seconds, and
each arm's difference from fp32 in points; writes JSON. Finished runs are read back, a
killed one resumes (``run_annotation``). On a GPU, at P0's settings::

    python benchmarks/precision_ab.py --out runs/precision --set dataset=corel-5k \\
        backbone=tresnet_m image_size=448 epochs=40 normalize=dataset

On this CPU (MobileNetV2 from a local weights file, 128 px, 6 epochs)::

    python benchmarks/precision_ab.py --out runs/precision --set dataset=corel-5k \\
        backbone=mobilenetv2_100 weights_file=W image_size=128 epochs=6 lr=3e-4 progress=false
"""

from __future__ import annotations

import argparse
from pathlib import Path

from annotlib.io import write_json
from annotlib.train import config_from, run_annotation
from annotlib.train.loop import native_bf16, resolve_device, use_channels_last

RESULTS = Path(__file__).resolve().parents[1] / "reports" / "bench"
COLUMNS = ("mAP", "CF1@0.5", "CF1 tuned", "OF1@0.5", "OF1 tuned", "N+@0.5", "N+ tuned")


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "nchw"


def arms(cfg, device) -> dict:
    """Run folder name -> config. bf16 and fp32 keep the config's layout setting as it is (the
    device's default unless set), so their runs are the ones the loop makes anyway."""
    layout = use_channels_last(cfg, device)
    return {f"bf16-{layout_name(layout)}": cfg.replace(bf16=True),
            f"fp32-{layout_name(layout)}": cfg.replace(bf16=False),
            f"fp32-{layout_name(not layout)}": cfg.replace(bf16=False, channels_last=not layout)}


def summary(metrics: dict) -> dict:
    """The test numbers compared, in points (N+ as counts), and the training time."""
    test = metrics["test"]
    values = [test["mAP"], test["CF1@0.5"], test["CF1@tuned"], test["OF1@0.5"], test["OF1@tuned"]]
    out = {name: 100 * v for name, v in zip(COLUMNS, values)}
    out.update({"N+@0.5": test["N+@0.5"], "N+ tuned": test["N+@tuned"],
                "best_epoch": metrics["selection"]["epoch"], "train_seconds": metrics["train_seconds"]})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the three runs")
    parser.add_argument("--config", help="a config.json to start from (default: TrainConfig's)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="override config fields")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: reports/bench/precision_ab-<device>.json")
    args = parser.parse_args(argv)
    try:
        cfg = config_from(args.config, args.set)
    except ValueError as err:
        parser.error(f"--set {err}")
    device = resolve_device(cfg.device)
    if not native_bf16(device):
        raise SystemExit(f"{device}: no bf16 arithmetic here, so the loop trains in fp32 anyway")

    results = {name: summary(run_annotation(arm, args.out / name)) for name, arm in arms(cfg, device).items()}
    fp32 = results[f"fp32-{layout_name(use_channels_last(cfg, device))}"]
    differences = {name: {c: r[c] - fp32[c] for c in COLUMNS} for name, r in results.items() if r is not fp32}

    print(f"\n{cfg.dataset}, {cfg.backbone} at {cfg.image_size} px, {cfg.epochs} epochs, seed {cfg.seed}, "
          f"{device}; test split, points")
    print(f"{'run':<28}" + "".join(f"{c:>11}" for c in COLUMNS) + f"{'train s':>10}")
    for name, r in results.items():
        print(f"{name:<28}" + "".join(f"{r[c]:>11.2f}" if "N+" not in c else f"{r[c]:>11d}" for c in COLUMNS)
              + f"{r['train_seconds']:>10.0f}")
    for name, diff in differences.items():
        print(f"{name + ' - fp32':<28}" + "".join(f"{diff[c]:>+11.2f}" for c in COLUMNS))

    report = {"config": cfg.to_dict(), "device": str(device), "runs": results,
              "differences_from_fp32": differences}
    path = args.json or RESULTS / f"precision_ab-{device.type}.json"
    write_json(path, report)
    print(f"\nwritten to {path}")
    return report


if __name__ == "__main__":
    main()
