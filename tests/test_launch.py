"""Running grid cells at once: the run folder's claim between processes, calls spread over
devices in processes of their own, and run_all.sh's --gpus and --launcher end to end on
small smoke grids, against the same grid run one cell after the other."""

import os
import signal
import subprocess
import sys
from functools import partial

import pytest
import torch

from annotlib import launch, reproduce
from annotlib.data.synthetic import generate_synthetic
from annotlib.io import read_json, write_json
from annotlib.papers import grid

# Holds the claim of the folder argv[1], says whether it got it, then waits for a line.
HOLDER = """import sys
from pathlib import Path
from annotlib.launch import claim
with claim(Path(sys.argv[1])) as held:
    print(held, flush=True)
    sys.stdin.readline()
"""


def holder(folder):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_one_process_wins_the_claim_and_a_killed_holder_leaves_none(tmp_path):
    first = holder(tmp_path / "run")
    try:
        assert first.stdout.readline() == "True\n"
        second = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "run")], input="\n",
                                capture_output=True, text=True, check=True)
        assert second.stdout == "False\n"
        with launch.claim(tmp_path / "run") as held:
            assert held is False
    finally:
        first.send_signal(signal.SIGKILL)  # as a crashed worker: nothing is released by hand
        first.wait()
    with launch.claim(tmp_path / "run") as held:
        assert held is True
    assert [p.name for p in (tmp_path / "run").iterdir()] == [launch.CLAIM]


def test_a_cell_another_process_holds_is_skipped_and_said_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "execute", lambda *a: pytest.fail("a held cell ran"))
    run = grid("smoke", papers=["p0"])[0]
    first = holder(tmp_path / "runs" / run.path)
    try:
        assert first.stdout.readline() == "True\n"
        assert reproduce.run_grid([run], tmp_path, ["tsne"]) == []
    finally:
        first.communicate("\n")
    assert f"[1/1] {run.path}: another process holds it (" in capsys.readouterr().out


def test_calls_run_at_once_one_per_device_each_seeing_only_its_own(tmp_path):
    # Each call marks "<call>-<its device>" and waits (at most a minute) until two calls have
    # marked: the first two can only finish by running at the same time.
    script = ('touch "$0/$1-$CUDA_VISIBLE_DEVICES"; '
              'for _ in $(seq 1200); do [ "$(ls "$0" | wc -l)" -ge 2 ] && exit 0; sleep 0.05; done; exit 1')
    calls = [(subprocess.run, (["bash", "-c", script, str(tmp_path), str(i)],)) for i in range(3)]
    results = launch.on_devices(calls, ["3", "5"])
    assert [r.returncode for r in results] == [0, 0, 0]
    assert [r.args[-1] for r in results] == ["0", "1", "2"]  # in the calls' order
    devices = {name.split("-")[0]: name.split("-")[1] for name in os.listdir(tmp_path)}
    assert {devices["0"], devices["1"]} == {"3", "5"} and devices["2"] in {"3", "5"}


def test_a_call_whose_process_dies_gives_an_error_in_its_place():
    results = launch.on_devices([(os._exit, (3,)), (str.upper, ("ok",))], [""])
    assert isinstance(results[0], RuntimeError) and "exit code 3" in str(results[0])
    assert results[1] == "OK"


def test_cpu_workers_share_the_cores_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert launch.device_env("", 2)["OMP_NUM_THREADS"] == "4"
    assert launch.device_env("", 16)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in launch.device_env("1", 2)  # a GPU worker's threads are its own
    assert launch.device_env("1", 2)["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert launch.device_env("", 2)["OMP_NUM_THREADS"] == "3"


def test_gpu_indices_count_within_the_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert launch.parse_devices("1, 3,cpu") == ["5", "7", ""]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.parse_devices("3,0") == ["3", "0"]
    with pytest.raises(ValueError, match="named twice"):
        launch.parse_devices("1,1")
    with pytest.raises(ValueError, match="shows 4 CUDA device"):
        launch.parse_devices("4")


def test_the_workers_failures_come_back_and_a_dead_worker_is_one(tmp_path, capfd):
    runs = grid("smoke", papers=["p0"])
    for run in runs:  # each folder holds a trained run of another config
        write_json(tmp_path / "runs" / run.path / "config.json", run.config.replace(epochs=5).to_dict())
        write_json(tmp_path / "runs" / run.path / "metrics.json", {})
    failures = reproduce.run_grid(runs, tmp_path, ["tsne"], launcher=partial(launch.on_devices, devices=["", ""]))
    assert [(path.parent.name, message.split(" holds ")[1][:30]) for path, message in failures] == \
        [(run.variant, "another config (epochs: 1 vs 5") for run in runs]
    out = capfd.readouterr().out  # the workers print to this process's stdout
    assert f"[1/2] {runs[0].path}: refused: " in out and f"[2/2] {runs[1].path}: refused: " in out

    def died(calls):
        return [RuntimeError("its process ended with exit code -9 before returning")] * len(calls)

    assert reproduce.run_grid(runs[:1], tmp_path, ["tsne"], launcher=died) == \
        [(tmp_path / "runs" / runs[0].path / "01_unsymmetric_loss.ipynb",
          "RuntimeError: its process ended with exit code -9 before returning")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two P0 smoke cells on a small synthetic set, run one after the other into ``sequential``;
    one thread per process, as the concurrent workers and jobs get, so the numbers can match."""
    base = tmp_path_factory.mktemp("grid")
    root = generate_synthetic(base / "synthetic", num_images=80, image_size=32, seed=5)
    argv = ["--profile", "smoke", "--papers", "p0", "--no-progress",
            "--set", f"data_root={root}", "image_size=32", "batch_size=16"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        # as conftest's per-test fixture, which a module's fixture runs before
        patch.setenv("ANNOTLIB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert reproduce.main([*argv, "--losses", "bce", "unsymmetric", "--device", "cpu",
                               "--reports", str(base / "sequential")]) == 0
    return base, argv


def numbers(reports, loss):
    return read_json(reports / "smoke/runs/p0/synthetic" / f"{loss}-seed0" / "metrics.json")["test"]


@pytest.mark.slow
def test_two_cpu_workers_give_the_numbers_of_one_after_the_other(tiny, monkeypatch):
    base, argv = tiny
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert reproduce.main([*argv, "--losses", "bce", "unsymmetric", "--gpus", "cpu,cpu",
                           "--reports", str(base / "concurrent")]) == 0
    for loss in ("bce", "unsymmetric"):
        assert numbers(base / "concurrent", loss) == numbers(base / "sequential", loss)
    assert reproduce.finished(base / "concurrent/smoke/99_report.ipynb")
    assert "| unsymmetric |" in (base / "concurrent/smoke/results.md").read_text()


@pytest.mark.slow
def test_submitit_jobs_run_the_cells_and_the_report_is_built_once(tiny, monkeypatch):
    base, argv = tiny
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reports = base / "jobs"
    assert reproduce.main([*argv, "--losses", "bce", "--launcher", "submitit-local", "--device", "cpu",
                           "--reports", str(reports)]) == 0
    assert numbers(reports, "bce") == numbers(base / "sequential", "bce")
    assert not (reports / "smoke/runs/p0/synthetic/unsymmetric-seed0").exists()
    assert "| bce |" in (reports / "smoke/results.md").read_text()
    logs = list((reports / "smoke/.submitit").glob("*_log.out"))
    assert len(logs) == 1 and "p0/synthetic/bce-seed0 ..." in logs[0].read_text()
