"""Running independent grid cells at once: one process per device of this machine
(:func:`on_devices`), or one job each on a cluster through submitit (:func:`on_cluster`); and
the exclusive claim that keeps two processes off one run folder (:func:`claim`).

A call is ``(function, args)``, both picklable by reference; its result comes back to the
caller, or the exception that ended its process or job.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import queue
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import submitit

CLAIM = ".claim"  # hidden: an export leaves it out
Call = tuple[Callable, tuple]


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """An exclusive ``flock`` on ``folder/.claim`` for the with-block: yields True when this
    process holds it, False when another one does. The kernel drops the lock with the process
    that held it, so a crashed worker leaves no claim behind."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CLAIM, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True


def parse_devices(text: str) -> list[str]:
    """``--gpus``: GPU indices as this process sees them (under its own
    ``CUDA_VISIBLE_DEVICES``), or ``cpu`` for a CPU worker, comma-separated. Returns what each
    worker's ``CUDA_VISIBLE_DEVICES`` will be ("" for a CPU worker)."""
    import torch

    names = [name.strip() for name in text.split(",")]
    if not all(name == "cpu" or name.isdigit() for name in names):
        raise ValueError("expected GPU indices or cpu, comma-separated, e.g. --gpus 0,1,2,3")
    gpus = [int(name) for name in names if name != "cpu"]
    if len(set(gpus)) < len(gpus):
        raise ValueError("a GPU named twice; one worker per GPU")
    count = torch.cuda.device_count()
    if gpus and max(gpus) >= count:
        raise ValueError(f"this machine shows {count} CUDA device(s)" +
                         ("" if count else "; cpu workers (e.g. --gpus cpu,cpu) run on the CPU"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # indices count within it, as torch's do
    physical = visible.split(",") if visible else [str(i) for i in range(count)]
    return ["" if name == "cpu" else physical[int(name)] for name in names]


def device_env(device: str, cpu_workers: int) -> dict[str, str]:
    """The environment of a worker on ``device`` (a ``CUDA_VISIBLE_DEVICES`` value, "" for the
    CPU). CPU workers share the cores unless ``OMP_NUM_THREADS`` says otherwise, so that they
    do not oversubscribe them."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
    if not device and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
    return env


def in_process(call: Call, env: dict[str, str]) -> object:
    """``call`` in a new Python process with ``env`` (``python -m annotlib.launch``)."""
    with tempfile.TemporaryDirectory(prefix="annotlib-call-") as tmp:
        spec, result = Path(tmp) / "call.pkl", Path(tmp) / "result.pkl"
        spec.write_bytes(pickle.dumps(call))
        code = subprocess.run([sys.executable, "-m", "annotlib.launch", str(spec), str(result)],
                              env=env, check=False).returncode
        if not result.exists():
            return RuntimeError(f"its process ended with exit code {code} before returning")
        return pickle.loads(result.read_bytes())


def on_devices(calls: list[Call], devices: list[str]) -> list:
    """Every call in a process of its own, one at a time per device and the devices all busy
    while calls remain; each process sees only its device. Results in the calls' order."""
    free = queue.SimpleQueue()
    for device in devices:
        free.put(device)
    cpu_workers = max(1, devices.count(""))

    def one(call: Call) -> object:
        device = free.get()
        try:
            return in_process(call, device_env(device, cpu_workers))
        finally:
            free.put(device)

    with ThreadPoolExecutor(len(devices)) as pool:
        return list(pool.map(one, calls))


class Job(submitit.helpers.Checkpointable):
    """A call as a cluster job. At the job's time limit submitit requeues it with the same call
    (``Checkpointable``); a grid cell then resumes from its last finished epoch."""

    def __call__(self, function: Callable, *args) -> object:
        return function(*args)


def on_cluster(calls: list[Call], folder: Path, cluster: str, gpus_per_job: int = 1,
               partition: str | None = None, minutes: int = 24 * 60) -> list:
    """Every call as one job of a job array through submitit (``cluster``: "slurm" or "local",
    submitit's executor of processes on this machine), logs in ``folder``; waits for them all.
    Results in the calls' order, the exception of a job that failed in its place."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    # A job's data pipeline runs on the GPU; its CPUs decode the image cache on first use and
    # draw the notebooks' t-SNE/UMAP projections.
    executor.update_parameters(name="annotlib", timeout_min=minutes, gpus_per_node=gpus_per_job,
                               tasks_per_node=1, cpus_per_task=8 * gpus_per_job,
                               **({"slurm_partition": partition} if partition else {}))
    with executor.batch():
        jobs = [executor.submit(Job(), function, *args) for function, args in calls]
    print(f"{len(jobs)} job(s) submitted ({cluster}), logs in {folder}", flush=True)
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # noqa: BLE001 -- one failed job must not hide the others
            results.append(err)
    return results


def _worker(spec: str, result: str) -> None:
    function, args = pickle.loads(Path(spec).read_bytes())
    Path(result).write_bytes(pickle.dumps(function(*args)))


if __name__ == "__main__":
    _worker(*sys.argv[1:])
