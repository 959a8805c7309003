"""Run a profile's grid of experiments through the papers' notebooks, then the report.

    ./run_all.sh [--profile quick|paper|smoke] [--data-root DIR] ...
    python -m annotlib.reproduce --profile quick

Each run executes its paper's notebook with papermill into
``<reports>/<profile>/runs/<paper>/<dataset>/<loss>-seed<k>/`` (the executed notebook
beside the run's config.json, history.csv, metrics.json and figures); then
``99_report.ipynb`` writes ``results.md`` and ``index.html`` into ``<reports>/<profile>/``.
Finished runs are skipped, a killed run resumes from its last epoch, and a failed run
does not stop the others: failures are listed at the end and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .experiments import Run, grid
from .train import TrainConfig, parse_overrides
from .train.run import claim_run_dir

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAPER_NOTEBOOKS = {"p0": "01_unsymmetric_loss.ipynb"}
REPORT_NOTEBOOK = "99_report.ipynb"
# Config fields that are named parameters of the paper notebooks; the rest go in ``extra``.
NOTEBOOK_FIELDS = ("dataset", "data_root", "loss", "backbone", "weights_file", "image_size", "epochs",
                   "batch_size", "lr", "threshold_split", "seed", "device", "progress")
# Per profile: which 2-D projections the notebooks draw. UMAP's numba code is compiled in
# every new kernel unless its on-disk cache is warm, so smoke skips it.
PROJECTIONS = {"smoke": ["tsne"], "quick": ["tsne", "umap"], "paper": ["tsne", "umap"]}


def notebook_parameters(cfg: TrainConfig, out_dir: Path, projections: list[str]) -> dict:
    """papermill parameters that make the paper notebook run exactly ``cfg`` into ``out_dir``."""
    values = cfg.to_dict()
    named = {name: values.pop(name) for name in NOTEBOOK_FIELDS}
    return {**named, "extra": values, "output_dir": str(out_dir), "projections": projections}


def finished(notebook: Path) -> bool:
    """True when ``notebook`` is an executed copy that papermill completed without an error."""
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("papermill", {})
    except (OSError, ValueError, KeyError):
        return False
    return bool(meta.get("end_time")) and not meta.get("exception")


def execute(source: str, target: Path, parameters: dict) -> None:
    import papermill
    target.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS / source), str(target), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS))


def train_data_parallel(cfg: TrainConfig, run_dir: Path, nproc: int) -> None:
    """Train ``cfg`` into ``run_dir`` under torchrun on ``nproc`` processes; the notebook then
    finds the finished run and only evaluates and plots it."""
    claim_run_dir(cfg, run_dir)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    "-m", "annotlib.train", "--config", str(run_dir / "config.json"), "--out", str(run_dir)],
                   check=True)


def run_grid(runs: list[Run], out: Path, projections: list[str], nproc: int = 1) -> list[tuple[Path, str]]:
    """Execute every run's notebook that has not finished; returns (notebook, error) failures."""
    failures = []
    for i, run in enumerate(runs, 1):
        run_dir = out / "runs" / run.path
        notebook = run_dir / PAPER_NOTEBOOKS[run.paper]
        if finished(notebook):
            print(f"[{i}/{len(runs)}] {run.path}: finished before, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.path} ...", flush=True)
        started = time.perf_counter()
        try:
            if nproc > 1:
                train_data_parallel(run.config, run_dir, nproc)
            execute(PAPER_NOTEBOOKS[run.paper], notebook,
                    notebook_parameters(run.config, run_dir.resolve(), projections))
        except Exception as err:  # noqa: BLE001 -- one failed run must not stop the grid
            failures.append((notebook, f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"))
            print(f"    failed: {failures[-1][1]}", flush=True)
            continue
        print(f"    done in {time.perf_counter() - started:.0f} s", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["quick", "paper", "smoke"],
                        help="quick: synthetic data, CPU-sized, every P0 loss, about 10 minutes on 2 "
                             "cores (default); paper: the papers' recipes on the real datasets under "
                             "the data root, for a GPU; smoke: the same pipeline in a few minutes")
    parser.add_argument("--data-root", help="folder holding the datasets, one subfolder each "
                                            "(default: $ANNOTLIB_DATA_ROOT)")
    parser.add_argument("--reports", default="reports", help="output folder (default: reports)")
    parser.add_argument("--datasets", nargs="+", help="restrict the paper profile to these datasets")
    parser.add_argument("--losses", nargs="+", help="restrict the grid to these losses")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="seeds to run (default: the profile's); several give mean ± std in the report")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override config fields of every run, e.g. --set backbone=mobilenetv2_100 "
                             "image_size=224 epochs=10 (a changed config needs its own --reports folder)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars in the notebooks")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="train each run data-parallel on N GPUs (torchrun) before its notebook "
                             "draws the figures (default: 1, training inside the notebook)")
    args = parser.parse_args(argv)
    if args.data_root:
        os.environ["ANNOTLIB_DATA_ROOT"] = str(Path(args.data_root).resolve())

    out = Path(args.reports) / args.profile
    try:
        overrides = {**parse_overrides(args.set), "device": args.device, "progress": not args.no_progress}
    except ValueError as err:
        parser.error(f"--set {err}")
    runs = [dataclasses.replace(run, config=run.config.replace(**overrides))
            for run in grid(args.profile, datasets=args.datasets, seeds=args.seeds)
            if not args.losses or run.config.loss in args.losses]
    failures = run_grid(runs, out, PROJECTIONS[args.profile], args.nproc_per_node)
    report = out / REPORT_NOTEBOOK
    try:
        execute(REPORT_NOTEBOOK, report, {"profile_dir": str(out.resolve())})
        print(f"results: {out / 'results.md'} and {out / 'index.html'}")
    except Exception as err:  # noqa: BLE001 -- reported with the run failures
        failures.append((report, f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"))
    if failures:
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for notebook, message in failures:
            print(f"  {notebook}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
