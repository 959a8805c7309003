"""Run a profile's grid of experiments through the papers' notebooks, then the report.

    ./run_all.sh [--profile quick|real|paper|smoke] [--data-root DIR] ...
    python -m annotlib.reproduce --profile quick

Each run executes its paper's notebook with papermill into
``<reports>/<profile>/runs/<paper>/<dataset>/<variant>/`` (the executed notebook beside the
run's config.json, history.csv, metrics.json and figures; a notebook that trains several
configurations, as P3's sweep, gives each a sub-folder). The papers, their notebooks and
grids come from :mod:`annotlib.papers`. Then ``99_report.ipynb`` writes ``results.md``
and ``index.html`` into ``<reports>/<profile>/``.
Finished runs are skipped, a killed run resumes from its last epoch, and a failed run
does not stop the others: failures are listed at the end and the exit code is 1.
The runs go one after the other, or all at once: ``--gpus 0,1,2,3`` (one per GPU of this
machine) or ``--launcher slurm`` (one job each); the report is built once, at the end.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import launch
from .models.backbone import weights_path
from .papers import PAPERS, PROFILES, REAL_DATA_PROFILES, Run, grid
from .train import TrainConfig, parse_overrides
from .train.run import claim_run_dir, held_differences

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REPORT_NOTEBOOK = "99_report.ipynb"
# Per profile: which 2-D projections the notebooks draw. UMAP's numba code is compiled in
# every new kernel unless its on-disk cache is warm, so smoke skips it.
PROJECTIONS = {"smoke": ["tsne"], "quick": ["tsne", "umap"], "real": ["tsne"], "paper": ["tsne", "umap"]}
# The one measured time of the quick profile that --help and the README state: ./run_all.sh
# took 6 min 39 s on 2 CPU cores (its export: reports/reference/quick).
QUICK_MINUTES = 7
# The real profile's measured time on 2 CPU cores: 13 min 25 s + 53 min 32 s, stopped once and
# resumed (its export: reports/reference/real).
REAL_MINUTES = 67
# The default data root: the shared datasets beside the repository (as the tests read them).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def notebook_parameters(run: Run, out_dir: Path, projections: list[str]) -> dict:
    """papermill parameters that make the run's paper notebook run exactly ``run`` into ``out_dir``."""
    return {**PAPERS[run.paper].notebook_parameters(run), "output_dir": str(out_dir), "projections": projections}


def finished(notebook: Path, parameters: dict | None = None) -> bool:
    """True when ``notebook`` is an executed copy that papermill completed without an error,
    run with these ``parameters`` where given."""
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8"))["metadata"].get("papermill", {})
    except (OSError, ValueError, KeyError):
        return False
    ran_with = meta.get("parameters", {})
    same = all(ran_with.get(name) == json.loads(json.dumps(value)) for name, value in (parameters or {}).items())
    return bool(meta.get("end_time")) and not meta.get("exception") and same


def stale(run: Run, run_dir: Path) -> list[str]:
    """For every training of ``run`` whose folder holds a run of another config: the folder and
    the differences. Such a run is neither skipped nor reported: it is refused by name. The rule
    is :func:`claim_run_dir`'s (:func:`held_differences`): a folder that never trained is free."""
    problems = []
    for variant, cfg in PAPERS[run.paper].trainings(run):
        differs = held_differences(cfg, run_dir / variant)
        if differs:
            problems.append(f"{run_dir / variant / 'config.json'} holds another config "
                            f"({'; '.join(differs)}, asked vs held)")
    return problems


def execute(source: str, target: Path, parameters: dict) -> None:
    """Execute the notebook ``source`` into ``target``. Unless ``parameters["progress"]`` is
    false (``--no-progress``), what the kernel prints (one line per epoch) is copied to this
    stdout as it comes, so that a run of many minutes is not silent; its stderr stays in the
    notebook."""
    import papermill
    target.parent.mkdir(parents=True, exist_ok=True)
    # relative paths: papermill records them in the notebook, which is shared as it is
    papermill.execute_notebook(os.path.relpath(NOTEBOOKS / source), os.path.relpath(target), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS),
                               stdout_file=sys.stdout if parameters.get("progress", True) else None,
                               # the kernel's start-up warning that its local TCP sockets are not
                               # encrypted would open every run's output; its errors still show
                               extra_arguments=["--IPKernelApp.log_level=ERROR"])


def train_data_parallel(cfg: TrainConfig, run_dir: Path, nproc: int) -> None:
    """Train ``cfg`` into ``run_dir`` under torchrun on ``nproc`` processes; the notebook then
    finds the finished run and only evaluates and plots it."""
    if (run_dir / "metrics.json").exists():
        return
    claim_run_dir(cfg, run_dir)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                    "-m", "annotlib.train", "--config", str(run_dir / "config.json"), "--out", str(run_dir)],
                   check=True)


def run_cell(run: Run, out: Path, projections: list[str], nproc: int = 1,
             label: str = "") -> tuple[Path, str] | None:
    """Execute ``run``'s notebook unless it finished before; returns its (notebook, error)
    failure, else None. A run folder holding another config is a failure naming the
    differences, never skipped. The cell holds its folder's :func:`~annotlib.launch.claim`
    while it runs: a cell that another process holds is skipped, and said so."""
    paper = PAPERS[run.paper]
    run_dir = out / "runs" / run.path
    notebook = run_dir / paper.notebook
    # relative to the notebooks' folder, where they run: no local path in a shared notebook
    parameters = notebook_parameters(run, Path(os.path.relpath(run_dir.resolve(), NOTEBOOKS)), projections)
    with launch.claim(run_dir) as held:
        if not held:
            print(f"{label} {run.path}: another process holds it ({run_dir / launch.CLAIM}), skipped",
                  flush=True)
            return None
        conflicts = stale(run, run_dir)
        if conflicts:
            failure = (notebook, "; ".join(conflicts) + "; use another --reports folder")
            print(f"{label} {run.path}: refused: {failure[1]}", flush=True)
            return failure
        if finished(notebook, parameters):
            print(f"{label} {run.path}: finished before, skipped", flush=True)
            return None
        print(f"{label} {run.path} ...", flush=True)
        started = time.perf_counter()
        try:
            if nproc > 1:
                for variant, cfg in paper.trainings(run):
                    train_data_parallel(cfg, run_dir / variant, nproc)
            execute(paper.notebook, notebook, parameters)
        except Exception as err:  # noqa: BLE001 -- one failed run must not stop the grid
            failure = (notebook, describe(err))
            print(f"    {run.path} failed: {failure[1]}", flush=True)
            return failure
        print(f"    {run.path} done in {time.perf_counter() - started:.0f} s", flush=True)
        return None


def describe(err: BaseException) -> str:
    """An error in one line: its type and the last line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


def run_grid(runs: list[Run], out: Path, projections: list[str], nproc: int = 1,
             launcher: Callable[[list[launch.Call]], list] | None = None) -> list[tuple[Path, str]]:
    """Every run through :func:`run_cell`: one after the other in this process, or by
    ``launcher`` (:func:`~annotlib.launch.on_devices` or :func:`~annotlib.launch.on_cluster`
    with their options bound), all at once. Returns the (notebook, error) failures, a cell
    whose process or job died among them."""
    calls = [(run_cell, (run, out, projections, nproc, f"[{i}/{len(runs)}]")) for i, run in enumerate(runs, 1)]
    results = launcher(calls) if launcher else [function(*args) for function, args in calls]
    failures = []
    for run, result in zip(runs, results):
        if isinstance(result, BaseException):
            result = (out / "runs" / run.path / PAPERS[run.paper].notebook, describe(result))
        if result:
            failures.append(result)
    return failures


def select(runs: list[Run], names: list[str]) -> list[Run]:
    """The runs limited to the losses or methods ``names`` (a run with none of them is dropped)."""
    kept = (PAPERS[run.paper].restrict(run, names) for run in runs)
    return [run for run in kept if run is not None]


def preflight(runs: list[Run]) -> list[str]:
    """What the runs need and cannot find, one line each: every dataset's annotations and
    images (the splits each training reads) and every weights file."""
    from .data import DataError, dataset_root, load_split

    problems, seen = [], set()
    for run in runs:
        for _, cfg in PAPERS[run.paper].trainings(run):
            if cfg.weights_file and cfg.weights_file not in seen:
                seen.add(cfg.weights_file)
                path = weights_path(cfg.weights_file)
                if not path.is_file():
                    problems.append(f"weights_file {path}: no such file")
            if cfg.dataset == "synthetic" or (cfg.dataset, cfg.data_root, cfg.test_split) in seen:
                continue  # the synthetic set is generated on first use
            seen.add((cfg.dataset, cfg.data_root, cfg.test_split))
            try:
                root = dataset_root(cfg.dataset, cfg.data_root)
            except DataError as err:
                problems.append(str(err))
                continue
            if not root.is_dir():
                problems.append(f"{cfg.dataset}: no folder {root}")
                continue
            for split in dict.fromkeys(("train", "val", cfg.test_split)):
                try:
                    data = load_split(cfg.dataset, split, root, val_fraction=cfg.val_fraction)
                except (DataError, OSError) as err:
                    problems.append(f"{cfg.dataset} {split}: {err}")
                    continue
                missing = [p for p in data.image_paths if not Path(p).is_file()]
                if missing:
                    problems.append(f"{cfg.dataset} {split}: {len(missing)} of {len(data)} image files "
                                    f"missing, e.g. {missing[0]}")
    return problems


def export(profile_dir: Path, target: Path, with_checkpoints: bool = False, compact: bool = False) -> int:
    """Copy a profile's report, notebooks (executed and rendered), figures, metrics and configs
    into ``target``, a folder that reads on its own; checkpoints (``*.pt``) only when asked.
    ``compact``: text only, for a repository: the executed notebooks (their large figures as
    JPEG, :func:`compact_notebook`), metrics, configs and histories, and a report of text and
    tables linking them; no renders, figure files or per-image test outputs (the claims'
    intervals are computed from those before they are left out). Returns the bytes written."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target}: not empty; export into a new folder")
    skip = shutil.ignore_patterns(*(() if with_checkpoints else ("*.pt",)), ".*",
                                  *(("*.png", "*.jpg") if compact else ()))

    def ignore(folder: str, names: list[str]) -> set[str]:
        renders = {n for n in names if n.endswith(".html") and n[:-5] + ".ipynb" in names} if compact else set()
        return set(skip(folder, names)) | renders

    shutil.copytree(profile_dir, target, ignore=ignore, dirs_exist_ok=True)
    if compact:
        from .report import write_report

        for notebook in target.rglob("*.ipynb"):
            compact_notebook(notebook)
        write_report(target, title=f"annotlib results: {profile_dir.name}", figures=False)
        for outputs in target.rglob("*.npz"):
            outputs.unlink()
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


def compact_notebook(path: Path, largest: int = 100_000, quality: int = 80) -> None:
    """Re-encode the PNG outputs of the notebook at ``path`` whose base64 text is over ``largest``
    characters as JPEG at ``quality``, transparency flattened onto white: grids of photographs
    with heat maps (P4's attention per word) take up to 1.4 MB as PNG and a tenth of that as
    JPEG; plots stay PNG."""
    from PIL import Image

    from .io import atomic_write_text

    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if len(data.get("image/png", "")) <= largest:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(data.pop("image/png")))).convert("RGBA")
            flat = Image.new("RGB", image.size, "white")
            flat.paste(image, mask=image.getchannel("A"))
            buffer = io.BytesIO()
            flat.save(buffer, "JPEG", quality=quality)
            data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            metadata = output.get("metadata", {})
            if "image/png" in metadata:
                metadata["image/jpeg"] = metadata.pop("image/png")
    atomic_write_text(path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def choose_launcher(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Path):
    """From ``--gpus``, ``--launcher`` and their options: (``run_grid``'s launcher, its output
    folder, the processes that train each run). Any option that does not apply is refused."""
    slurm = {"--slurm-partition": args.slurm_partition, "--slurm-time": args.slurm_time}
    for option, value in {**slurm, "--gpus-per-job": args.gpus_per_job}.items():
        if value is not None and not args.launcher:
            parser.error(f"{option} applies to --launcher only")
        if value is not None and option in slurm and args.launcher != "slurm":
            parser.error(f"{option} applies to --launcher slurm only")
    for option, value in (("--gpus-per-job", args.gpus_per_job), ("--slurm-time", args.slurm_time)):
        if value is not None and value < 1:
            parser.error(f"{option} {value}: must be at least 1")
    if args.gpus and args.launcher:
        parser.error("--gpus and --launcher: choose one (a cluster's jobs get their GPUs from it)")
    if (args.gpus or args.launcher) and args.nproc_per_node != 1:
        parser.error("--nproc-per-node applies without --gpus and --launcher (with --launcher: "
                     "--gpus-per-job)")
    if args.gpus:
        if args.device != "auto":
            parser.error(f"--device {args.device} with --gpus: each worker uses its own device; "
                         "leave --device out")
        try:
            devices = launch.parse_devices(args.gpus)
        except ValueError as err:
            parser.error(f"--gpus {args.gpus}: {err}")
        return functools.partial(launch.on_devices, devices=devices), out, 1
    if args.launcher == "slurm" and not shutil.which("sbatch"):
        parser.error("--launcher slurm: no sbatch on this machine; submit from one of the cluster's")
    if args.launcher:
        gpus = args.gpus_per_job or 1
        out = out.resolve()  # jobs may start in another folder
        return functools.partial(
            launch.on_cluster, folder=out / ".submitit",
            cluster="slurm" if args.launcher == "slurm" else "local", gpus_per_job=gpus,
            partition=args.slurm_partition, minutes=args.slurm_time or 24 * 60), out, gpus
    return None, out, args.nproc_per_node


def set_roots(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Point $ANNOTLIB_DATA_ROOT and $ANNOTLIB_WEIGHTS_ROOT (which the notebooks' kernels
    inherit) at the folders given, else at the defaults the help names, and say which."""
    data = set_root(parser, "--data-root", "ANNOTLIB_DATA_ROOT", args.data_root, SHARED_DATA)
    # weights beside the datasets, as in the shared layout
    set_root(parser, "--weights-root", "ANNOTLIB_WEIGHTS_ROOT", args.weights_root, data.parent / "weights")


def set_root(parser: argparse.ArgumentParser, option: str, variable: str, given: str | None,
             default: Path) -> Path:
    folder = Path(given or os.environ.get(variable) or default).resolve()
    if given and not folder.is_dir():
        parser.error(f"{option} {given}: not a directory")
    os.environ[variable] = str(folder)
    print(f"{variable}={folder}" + ("" if folder.is_dir() else " (no such folder)"), flush=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES),
                        help=f"quick: synthetic data, CPU-sized, every paper's methods, about {QUICK_MINUTES} "
                             "minutes on 2 cores (default); real: each paper's central comparison "
                             f"on the real datasets under the data root, sized for 2 CPU cores (about "
                             f"{REAL_MINUTES} minutes); paper: the papers' recipes on the real datasets, "
                             "for a GPU; smoke: the same pipeline in a few minutes")
    parser.add_argument("--data-root", help="real and paper profiles: the folder holding the datasets, one "
                                            "subfolder each (default: $ANNOTLIB_DATA_ROOT, else "
                                            "../shared/data beside the repository)")
    parser.add_argument("--weights-root", help="real and paper profiles: the folder that relative weights_file "
                                               "names are read from (default: $ANNOTLIB_WEIGHTS_ROOT, else "
                                               "the data root's sibling folder weights/)")
    parser.add_argument("--reports", default="reports", help="output folder (default: reports)")
    parser.add_argument("--datasets", nargs="+",
                        help="real and paper profiles: run their papers on these datasets instead of their own")
    parser.add_argument("--papers", nargs="+", choices=sorted(PAPERS),
                        help="restrict the grid to these papers")
    parser.add_argument("--losses", nargs="+",
                        help="restrict the grid to these losses or methods (" + "; ".join(
                            f"{key}: {', '.join(paper.methods)}" for key, paper in PAPERS.items()) + ")")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="seeds to run (default: the profile's); several give mean ± std in the report")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override config fields of every run, e.g. --set backbone=mobilenetv2_100 "
                             "image_size=224 epochs=10 (a changed config needs its own --reports folder; "
                             "P3 sets loss, label_proportion and curriculum_rounds per method itself)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="quiet: no line per epoch, in the terminal or in the notebooks")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="train each run data-parallel on N GPUs (torchrun) before its notebook "
                             "draws the figures (default: 1, training inside the notebook)")
    parser.add_argument("--gpus", metavar="LIST",
                        help="run the grid's cells at once, one per GPU, e.g. --gpus 0,1,2,3 (each "
                             "cell's process sees only its GPU; a run folder is claimed by one "
                             "process at a time); cpu entries are CPU workers, e.g. --gpus cpu,cpu")
    parser.add_argument("--launcher", choices=["slurm", "submitit-local"],
                        help="submit each cell as a job through submitit and wait for them all: "
                             "slurm, or submitit-local (every job at once as a process of this "
                             "machine, to try a setup); logs in <reports>/<profile>/.submitit")
    parser.add_argument("--slurm-partition", metavar="NAME", help="--launcher slurm: the partition")
    parser.add_argument("--slurm-time", type=int, metavar="MINUTES",
                        help="--launcher slurm: each job's time limit; a job that reaches it is "
                             "requeued and resumes from its last epoch (default: 1440)")
    parser.add_argument("--gpus-per-job", type=int, metavar="N",
                        help="--launcher: GPUs of each job; with several, its training runs "
                             "under torchrun as with --nproc-per-node (default: 1)")
    parser.add_argument("--export", metavar="DIR", type=Path,
                        help="then copy the profile's report, notebooks, figures, metrics and configs "
                             "into DIR, a folder to share (checkpoints only with --with-checkpoints)")
    parser.add_argument("--with-checkpoints", action="store_true", help="--export: include the weights")
    parser.add_argument("--compact", action="store_true",
                        help="--export: text only, for a repository: the executed notebooks (large "
                             "figures as JPEG), metrics, configs and a report linking them; no renders, "
                             "figure files or per-image test outputs")
    args = parser.parse_args(argv)
    for option, value in (("--with-checkpoints", args.with_checkpoints), ("--compact", args.compact)):
        if value and not args.export:
            parser.error(f"{option} applies to --export only")
    if args.export and args.export.exists() and any(args.export.iterdir()):
        parser.error(f"--export {args.export}: not empty; export into a new folder")
    # Every option acts or is refused before anything runs.
    if args.profile not in REAL_DATA_PROFILES:
        for option, value in (("--datasets", args.datasets), ("--data-root", args.data_root),
                              ("--weights-root", args.weights_root)):
            if value:
                parser.error(f"{option} applies to the {' and '.join(REAL_DATA_PROFILES)} profiles only "
                             f"({args.profile} runs on the generated synthetic set)")
    else:
        set_roots(parser, args)

    launcher, out, nproc = choose_launcher(parser, args, Path(args.reports) / args.profile)
    try:
        overrides = {**parse_overrides(args.set), "device": args.device, "progress": not args.no_progress}
        # The notebooks run in their own folder: paths given here are read from here.
        for name in ("weights_file", "data_root"):
            if isinstance(overrides.get(name), str):
                overrides[name] = str(Path(overrides[name]).resolve())
        runs = [dataclasses.replace(run, config=run.config.replace(**overrides))
                for run in grid(args.profile, papers=args.papers, datasets=args.datasets, seeds=args.seeds)]
    except ValueError as err:
        parser.error(f"--set {err}" if args.set else str(err))
    if args.losses:
        idle = [name for name in args.losses if not select(runs, [name])]
        if idle:
            known = "; ".join(f"{run.paper}: {', '.join(PAPERS[run.paper].methods)}"
                              for run in {run.paper: run for run in runs}.values())
            parser.error(f"--losses {' '.join(idle)}: selects no run of this grid (its losses and "
                         f"methods: {known})")
        runs = select(runs, args.losses)
    missing = preflight(runs)
    if missing:
        print(f"{len(missing)} thing(s) the {args.profile} profile needs are missing; nothing was run:",
              file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
        return 2
    failures = run_grid(runs, out, PROJECTIONS[args.profile], nproc, launcher)
    report = out / REPORT_NOTEBOOK
    try:
        execute(REPORT_NOTEBOOK, report, {"profile_dir": os.path.relpath(out.resolve(), NOTEBOOKS)})
        print(f"results: {out / 'results.md'} and {out / 'index.html'}")
    except Exception as err:  # noqa: BLE001 -- reported with the run failures
        failures.append((report, f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"))
    if args.export and not failures:
        size = export(out, args.export, args.with_checkpoints, args.compact)
        print(f"exported to {args.export}: {size / 2**20:.1f} MiB")
    if failures:
        if args.export:
            print(f"not exported to {args.export}: a run or the report failed", file=sys.stderr)
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for notebook, message in failures:
            print(f"  {notebook}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
