"""Run a profile's grid of experiments through the papers' notebooks, then the report.

    ./run_all.sh [--profile quick|paper|smoke] [--data-root DIR] ...
    python -m annotlib.reproduce --profile quick

Each run executes its paper's notebook with papermill into
``<reports>/<profile>/runs/<paper>/<dataset>/<loss>-seed<k>/`` (the executed notebook
beside the run's config.json, history.csv, metrics.json and figures); P3's notebook runs its
whole sweep of label proportions and methods into ``runs/p3/<dataset>/seed<k>/``, one
``p<proportion>/<method>/`` sub-folder each. Then ``99_report.ipynb`` writes ``results.md``
and ``index.html`` into ``<reports>/<profile>/``.
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

from .experiments import P3_METHOD_FIELDS, Run, grid, p3_fields, p3_sweep, p3_variant
from .train import TrainConfig, parse_overrides
from .train.run import claim_run_dir

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAPER_NOTEBOOKS = {"p0": "01_unsymmetric_loss.ipynb", "p3": "04_partial_labels.ipynb"}
REPORT_NOTEBOOK = "99_report.ipynb"
# Config fields that are named parameters of the paper notebooks; the rest go in ``extra``.
NOTEBOOK_FIELDS = ("dataset", "data_root", "loss", "backbone", "weights_file", "image_size", "epochs",
                   "batch_size", "lr", "threshold_split", "seed", "device", "progress")
# Config fields a paper's notebook sets itself, so they are not passed: P3's notebook sets the
# loss, label proportion and curriculum of each (proportion, method) it runs.
NOTEBOOK_SETS = {"p3": P3_METHOD_FIELDS}
# Per profile: which 2-D projections the notebooks draw. UMAP's numba code is compiled in
# every new kernel unless its on-disk cache is warm, so smoke skips it.
PROJECTIONS = {"smoke": ["tsne"], "quick": ["tsne", "umap"], "paper": ["tsne", "umap"]}


def notebook_parameters(cfg: TrainConfig, out_dir: Path, projections: list[str], paper: str = "p0",
                        parameters: dict | None = None) -> dict:
    """papermill parameters that make ``paper``'s notebook run exactly ``cfg`` into ``out_dir``,
    with the run's own ``parameters`` (P3: its proportions and methods)."""
    values = cfg.to_dict()
    for name in NOTEBOOK_SETS.get(paper, ()):
        del values[name]
    named = {name: values.pop(name) for name in NOTEBOOK_FIELDS if name in values}
    return {**named, "extra": values, **(parameters or {}), "output_dir": str(out_dir),
            "projections": projections}


def finished(notebook: Path, parameters: dict | None = None) -> bool:
    """True when ``notebook`` is an executed copy that papermill completed without an error,
    run with these ``parameters`` where given (a P3 sweep with other proportions or methods
    has not finished this one)."""
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("papermill", {})
    except (OSError, ValueError, KeyError):
        return False
    ran_with = meta.get("parameters", {})
    same = all(ran_with.get(name) == json.loads(json.dumps(value)) for name, value in (parameters or {}).items())
    return bool(meta.get("end_time")) and not meta.get("exception") and same


def execute(source: str, target: Path, parameters: dict) -> None:
    import papermill
    target.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS / source), str(target), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS))


def train_data_parallel(cfg: TrainConfig, run_dir: Path, nproc: int) -> None:
    """Train ``cfg`` into ``run_dir`` under torchrun on ``nproc`` processes; the notebook then
    finds the finished run and only evaluates and plots it."""
    if (run_dir / "metrics.json").exists():
        return
    claim_run_dir(cfg, run_dir)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    "-m", "annotlib.train", "--config", str(run_dir / "config.json"), "--out", str(run_dir)],
                   check=True)


def trainings(run: Run) -> list[tuple[str, TrainConfig]]:
    """(sub-folder, config) of every training the notebook of ``run`` does: the run itself,
    or for P3 one per (proportion, method) of its sweep."""
    if run.paper != "p3":
        return [("", run.config)]
    sweep = p3_sweep(run.config.dataset, run.parameters["proportions"], run.parameters["methods"],
                     **p3_fields(run.config))
    return [(p3_variant(p, method), cfg) for p, method, cfg in sweep]


def select(runs: list[Run], losses: list[str]) -> list[Run]:
    """The runs with one of ``losses`` (P0) and the P3 runs restricted to the methods among
    them (a P3 run without any is dropped)."""
    selected = []
    for run in runs:
        if run.paper == "p3":
            methods = [m for m in run.parameters["methods"] if m in losses]
            if methods:
                selected.append(dataclasses.replace(run, parameters={**run.parameters, "methods": methods}))
        elif run.config.loss in losses:
            selected.append(run)
    return selected


def run_grid(runs: list[Run], out: Path, projections: list[str], nproc: int = 1) -> list[tuple[Path, str]]:
    """Execute every run's notebook that has not finished; returns (notebook, error) failures."""
    failures = []
    for i, run in enumerate(runs, 1):
        run_dir = out / "runs" / run.path
        notebook = run_dir / PAPER_NOTEBOOKS[run.paper]
        if finished(notebook, run.parameters):
            print(f"[{i}/{len(runs)}] {run.path}: finished before, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {run.path} ...", flush=True)
        started = time.perf_counter()
        try:
            if nproc > 1:
                for variant, cfg in trainings(run):
                    train_data_parallel(cfg, run_dir / variant, nproc)
            execute(PAPER_NOTEBOOKS[run.paper], notebook,
                    notebook_parameters(run.config, run_dir.resolve(), projections, run.paper, run.parameters))
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
                        help="quick: synthetic data, CPU-sized, every P0 loss and P3 method, about 15 "
                             "minutes on 2 cores (default); paper: the papers' recipes on the real "
                             "datasets under the data root, for a GPU; smoke: the same pipeline in a "
                             "few minutes")
    parser.add_argument("--data-root", help="folder holding the datasets, one subfolder each "
                                            "(default: $ANNOTLIB_DATA_ROOT)")
    parser.add_argument("--reports", default="reports", help="output folder (default: reports)")
    parser.add_argument("--datasets", nargs="+",
                        help="run the paper profile's papers on these datasets instead of their own")
    parser.add_argument("--papers", nargs="+", choices=sorted(PAPER_NOTEBOOKS),
                        help="restrict the grid to these papers")
    parser.add_argument("--losses", nargs="+",
                        help="restrict the grid to these losses (P0) and methods (P3: partial_bce, "
                             "known_only, unknown_negative, curriculum)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="seeds to run (default: the profile's); several give mean ± std in the report")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override config fields of every run, e.g. --set backbone=mobilenetv2_100 "
                             "image_size=224 epochs=10 (a changed config needs its own --reports folder; "
                             "P3 sets loss, label_proportion and curriculum_rounds per method itself)")
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
            if not args.papers or run.paper in args.papers]
    if args.losses:
        runs = select(runs, args.losses)
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
