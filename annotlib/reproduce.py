"""Run a profile's grid of experiments and write its results table (``run_all.sh``).

    python -m annotlib.reproduce --profile quick

Finished runs are skipped, a killed run resumes, a failed run does not stop the
others; failures are listed at the end and the exit code is non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

from .experiments import Run, grid, p0_reported
from .io import atomic_write_text
from .train import TrainConfig, run_annotation

COLUMNS = ("CP", "CR", "CF1", "OF1", "N+")


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if isinstance(value, int) or float(value).is_integer() else f"{value:.3f}"


def results_table(runs: list[Run], results: dict[str, dict]) -> str:
    """Markdown: one row per run (ours at 0.5 and tuned thresholds) and the paper's row beside it."""
    head = ("| dataset | loss | seed | protocol | thresholds | " + " | ".join(COLUMNS)
            + " | mAP | paper CF1 | paper N+ |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        c = run.config
        metrics = results.get(run.path)
        if metrics is None:
            continue
        protocol = f"{c.backbone} {c.image_size}px, {c.epochs} ep, thresholds on {c.threshold_split}"
        paper = p0_reported(c.dataset, c.loss) or {}
        for mode in ("at_0.5", "tuned"):
            ours = metrics["test"][mode]
            theirs = paper.get(mode, {})
            lines.append(f"| {c.dataset} | {c.loss} | {c.seed} | {protocol} | {mode} | "
                         + " | ".join(_fmt(ours[k]) for k in COLUMNS)
                         + f" | {_fmt(metrics['test']['mAP'])} | {_fmt(theirs.get('CF1'))} | "
                         f"{_fmt(theirs.get('N+'))} |")
    return "\n".join(lines) + "\n"


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=5", "backbone=resnet18"]`` -> config fields; values are read as JSON where
    they parse (numbers, true/false, null, lists), else kept as strings."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper", "smoke"],
                        help="quick: synthetic data, CPU-sized (default); paper: the papers' recipes "
                             "on the real datasets, for a GPU; smoke: a minimal check of the pipeline")
    parser.add_argument("--data-root", help="folder holding the datasets (default: $ANNOTLIB_DATA_ROOT)")
    parser.add_argument("--reports", default="reports", help="output folder (default: reports)")
    parser.add_argument("--datasets", nargs="+", help="restrict the paper profile to these datasets")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to run (default: the profile's)")
    parser.add_argument("--losses", nargs="+", help="restrict the grid to these losses")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override config fields of every run, e.g. --set backbone=mobilenetv2_100 "
                             "image_size=224 epochs=10 (a changed config needs its own --reports folder)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.data_root:
        os.environ["ANNOTLIB_DATA_ROOT"] = str(Path(args.data_root).resolve())

    out = Path(args.reports) / args.profile
    overrides = parse_overrides(args.set)
    runs = [dataclasses.replace(run, config=run.config.replace(**overrides))
            for run in grid(args.profile, datasets=args.datasets, seeds=args.seeds)
            if not args.losses or run.config.loss in args.losses]
    results, failures = {}, []
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.path}", flush=True)
        cfg = run.config.replace(device=args.device, progress=not args.no_progress)
        try:
            results[run.path] = run_annotation(cfg, out / "runs" / run.path)
        except Exception as err:  # one failed run must not stop the grid
            traceback.print_exc()
            failures.append((run.path, f"{type(err).__name__}: {err}"))
    table = results_table(runs, results)
    atomic_write_text(out / "results.md", f"# P0 results, profile {args.profile}\n\n{table}")
    print(table)
    print(f"results: {out / 'results.md'}")
    if failures:
        print(f"{len(failures)} of {len(runs)} runs failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  {out / 'runs' / path}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
