"""Nothing silent, nothing stuck: bad configs, undefined metrics, damaged files, full disks,
killed writers and diverging losses each stop with a message that names what and where."""

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from annotlib import io as io_module
from annotlib import reproduce
from annotlib.data import DataError, load_split, synthetic
from annotlib.data.synthetic import generate_synthetic
from annotlib.io import (
    CorruptFileError,
    DiskFullError,
    atomic_torch_save,
    atomic_write_text,
    read_json,
    torch_load,
    write_json,
)
from annotlib.papers import PAPERS, PROFILES, grid
from annotlib.train import TrainConfig, config_from, load_run, run_annotation
from annotlib.train import loop as fit_module
from annotlib.train import run as run_module
from annotlib.train.config import CHECKS

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=40, image_size=32,
                              seed=2)


@pytest.fixture
def tiny(tiny_root):
    return TrainConfig(dataset="synthetic", data_root=str(tiny_root), image_size=32, backbone="resnet10t",
                       epochs=1, batch_size=8, eval_batch_size=16, lr=3e-3, normalize="dataset",
                       progress=False, seed=0, device="cpu")


def strict_loads(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# --- 1. the config is checked when it is built ------------------------------------------------

def test_every_field_has_a_check():
    assert set(CHECKS) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", True), ("epochs", 2.0), ("batch_size", -8), ("eval_batch_size", "64"),
    ("image_size", None), ("step_epochs", 0), ("seed", -1), ("seed", 1.5), ("seed", False),
    ("lr", 0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf), ("lr", "1e-3"), ("lr", True),
    ("backbone_lr", -0.1), ("weight_decay", -1e-4), ("momentum", 1.0), ("step_gamma", 0),
    ("val_fraction", 1.0), ("val_fraction", -0.1), ("pct_start", 0), ("pct_start", 1.0),
    ("crop_scale", (0.8, 0.5)), ("crop_scale", (0.0, 1.0)), ("crop_scale", (0.5, 1.2)),
    ("crop_scale", (0.5,)), ("crop_scale", 0.5), ("crop_scale", ("a", "b")),
    ("task_kwargs", []), ("head_kwargs", {1: 0.3}), ("loss_kwargs", {"gamma": math.nan}),
    ("loss_kwargs", {"fn": print}), ("dataset", ""), ("task", None), ("backbone", 18), ("paper", None),
    ("data_root", Path("data")), ("data_root", ""), ("weights_file", ""), ("test_split", ""), ("device", "gpu"),
    ("device", 0), ("bf16", "yes"), ("hflip", 1), ("channels_last", 0), ("progress", None),
    ("compile", "false"), ("pretrained", None), ("nesterov", 1), ("normalize", "imagenet"),
    ("optimizer", "lamb"), ("scheduler", "poly"), ("sync_bn", "yes"), ("selection_split", "train"),
])
def test_a_bad_value_is_refused_in_one_line_naming_field_value_and_what_is_allowed(field, value):
    with pytest.raises(ValueError) as caught:
        TrainConfig(**{field: value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{field} must be {CHECKS[field][1]}, got ")
    assert message.endswith(f"got {value!r}")


def test_the_documented_example_and_every_way_a_config_is_built():
    with pytest.raises(ValueError, match=r"^epochs must be a positive integer, got 0$"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"^lr must be a number > 0, got 0$"):
        TrainConfig().replace(lr=0)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 'big'$"):
        config_from(None, ["batch_size=big"])
    with pytest.raises(ValueError, match=r"^pct_start must be a number in \(0, 1\), got 1$"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "pct_start": 1})


def test_edge_values_that_are_allowed_are_kept():
    cfg = TrainConfig(crop_scale=[0.5, 1], backbone_lr=0, val_fraction=0, lr=1, weight_decay=0, seed=0,
                      momentum=0, device="cuda:1", channels_last=False, loss_kwargs={"gamma": [1, 2]})
    assert cfg.crop_scale == (0.5, 1) and cfg.device == "cuda:1"
    assert config_from(None, ["crop_scale=[0.08, 1.0]"]).crop_scale == (0.08, 1.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_every_recipe_of_every_paper_builds_and_round_trips_through_json():
    count = 0
    for paper in PAPERS.values():
        for profile in PROFILES:
            for run in paper.grid(profile, None, None):
                for _, cfg in paper.trainings(run):
                    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
                    count += 1
    assert count >= 42  # every run of the five grids, a few of them several trainings


def test_a_refused_config_writes_nothing_and_a_corrected_rerun_takes_the_folder(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        run_annotation(tiny.replace(epochs=0), out)
    assert not out.exists()
    # A mistake only found later (a backbone timm does not have) leaves config.json behind...
    with pytest.raises(RuntimeError, match="no_such_net"):
        run_annotation(tiny.replace(backbone="no_such_net"), out)
    assert read_json(out / "config.json")["backbone"] == "no_such_net"
    # ...but nothing was trained, so the corrected config takes the folder.
    metrics = run_annotation(tiny, out)
    assert metrics["config"]["backbone"] == "resnet10t" == read_json(out / "config.json")["backbone"]
    # Once a run has trained, another config is still refused.
    with pytest.raises(ValueError, match=r"another config \(lr: 1\.0 vs 0\.003"):
        run_annotation(tiny.replace(lr=1.0), out)


# --- 2. strict JSON -----------------------------------------------------------------------------

def test_write_json_writes_non_finite_numbers_as_null(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"mAP": math.nan, "scores": [1.0, math.inf, -math.inf], "pair": (0.5, math.nan),
                      "nested": {"x": 2}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert strict_loads(text) == {"mAP": None, "scores": [1.0, None, None], "pair": [0.5, None],
                                  "nested": {"x": 2}}
    assert io_module.json_safe({"pair": (0.5, math.nan)}) == {"pair": (0.5, None)}  # tuples stay tuples


def test_a_test_split_without_positive_labels_gives_strict_json_with_a_reason(tiny, tmp_path,
                                                                              monkeypatch, caplog):
    original = run_module.load_splits

    def no_test_positives(cfg):
        splits = original(cfg)
        test = splits["test"]
        splits["test"] = dataclasses.replace(test, labels=torch.zeros_like(test.labels))
        return splits

    monkeypatch.setattr(run_module, "load_splits", no_test_positives)
    with caplog.at_level(logging.WARNING, logger=run_module.__name__):
        returned = run_annotation(tiny, tmp_path)
    metrics = strict_loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["mAP"] is None and isinstance(metrics["val"]["mAP"], float)
    assert metrics["undefined"]["test"]["mAP"] == "no positive labels in the test split"
    assert "val" not in metrics["undefined"]
    assert returned == metrics  # the same as a later call reads back
    assert any("mAP (no positive labels in the test split)" in r.getMessage() for r in caplog.records)


# --- 3. damaged files are named -----------------------------------------------------------------

@pytest.mark.parametrize("content", [b'{"schema": 1, "val": {"mAP": 0.', b"", b'{"a": 1}\xff'])
def test_a_damaged_json_file_is_named_and_said_not_to_be_valid_json(tmp_path, content):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))} is not valid JSON .*delete or restore it$"):
        read_json(path)
    assert isinstance(CorruptFileError("x"), ValueError)


def test_a_run_with_a_damaged_metrics_file_says_to_delete_it(tiny, tmp_path):
    run_module.claim_run_dir(tiny, tmp_path)
    (tmp_path / "metrics.json").write_text('{"schema": 1, "val": {"mA')  # a copy cut short
    with pytest.raises(CorruptFileError, match=r"metrics\.json is not valid JSON .*delete it to evaluate"):
        run_annotation(tiny, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"paper": ')
    with pytest.raises(CorruptFileError, match=r"config\.json is not valid JSON .*delete the run folder"):
        run_annotation(tiny, tmp_path)


def toy_fit_setup():
    from annotlib.data import DeviceBatches, Split
    from annotlib.losses import create_loss
    from annotlib.tasks import MultiLabelTask

    labels = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8).repeat(8, 1)
    split = Split("toy", "val", ["a", "b"], [f"{i}.png" for i in range(16)], labels=labels)
    batches = DeviceBatches(torch.zeros(16, 8, 8, 3, dtype=torch.uint8).numpy(), {"labels": labels},
                            batch_size=4, train=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    task = MultiLabelTask(create_loss("bce"))
    cfg = TrainConfig(epochs=2, scheduler="none", progress=False, channels_last=False, bf16=False)
    return model, task, batches, split, cfg


def test_a_truncated_checkpoint_is_named_with_delete_it_to_restart(tmp_path):
    model, task, batches, split, cfg = toy_fit_setup()
    fit_module.fit(model, task, batches, batches, split, cfg.replace(epochs=1), tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(checkpoint))} cannot be loaded .*delete it to restart that run$"):
        fit_module.fit(model, task, batches, batches, split, cfg, tmp_path)
    checkpoint.unlink()  # as the message says: the run starts again
    assert len(fit_module.fit(model, task, batches, batches, split, cfg, tmp_path)) == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04cut"])
def test_torch_load_names_any_unreadable_file(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))} cannot be loaded \(\w+.*\): .*; train again$"):
        torch_load(path, remedy="train again")
    with pytest.raises(FileNotFoundError):  # a missing file keeps its own, already clear, error
        torch_load(tmp_path / "missing.pt")


# --- 4. full disks and leftovers ----------------------------------------------------------------

def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    atomic_write_text(path, "old\n")
    real_locked_temp = io_module.locked_temp

    class FullFile:  # a file whose writes fail as on a full disk, part of the data written
        def __init__(self, file):
            self.file = file

        def __getattr__(self, name):
            return getattr(self.file, name)

        def write(self, data):
            self.file.write(data[:3])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    @contextlib.contextmanager
    def full_disk(tmp):
        with real_locked_temp(tmp) as file:
            yield FullFile(file)

    monkeypatch.setattr(io_module, "locked_temp", full_disk)
    with pytest.raises(DiskFullError) as caught:
        atomic_write_text(path, "epoch,loss\n1,0.5\n")
    error = caught.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(path) in str(error) and "filesystem is full" in str(error)
    assert "needed 17 bytes" in str(error)  # the encoded text
    monkeypatch.undo()
    assert path.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_full_disk_while_saving_a_checkpoint_says_how_much_was_written(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"

    def full_disk(obj, f):
        f.write(b"x" * 100)
        f.flush()
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match=rf"^.*{re.escape(str(path))}: the filesystem is full .*more than the 100 bytes"):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    assert leftovers(tmp_path) == [] and not path.exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, ValueError, PermissionError])
def test_any_failed_write_removes_its_temporary_file_and_keeps_its_error(tmp_path, monkeypatch, error):
    def fails(obj, f):
        f.write(b"partial")
        raise error("stop")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(error, match="stop"):
        atomic_torch_save({}, tmp_path / "best.pt")
    assert leftovers(tmp_path) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temporary_files_go_at_the_next_write_of_that_file(tmp_path):
    dead = dead_pid()
    stale = [f".metrics.json.tmp{dead}-0badf00d", f".metrics.json.tmp{dead}"]  # the latter: older name
    others = [f".task.json.tmp{dead}-0badf00d", ".metrics.json.tmpx"]  # another file's; not our name
    for name in stale + others:
        (tmp_path / name).write_text("partial")
    live = tmp_path / f".metrics.json.tmp{dead}-feedface"
    with io_module.locked_temp(live):  # a writer still at work holds its file's lock
        write_json(tmp_path / "metrics.json", {"ok": True})
        # The live writer's is kept (its rename still has to work), and so are other files'.
        assert leftovers(tmp_path) == sorted([live.name, *others])
    atomic_torch_save({}, tmp_path / "task.json")
    assert leftovers(tmp_path) == sorted([live.name, ".metrics.json.tmpx"])


def test_a_dead_writers_temporary_file_goes_even_when_its_pid_is_now_a_live_process(tmp_path):
    # The pid recorded in the name now belongs to a live process (this one, its parent), as
    # after the writer was killed and its pid reused: the writer is gone all the same.
    for name in (f".metrics.json.tmp{os.getpid()}-0badf00d", f".metrics.json.tmp{os.getppid()}-0badf00d",
                 f".metrics.json.tmp{os.getppid()}"):
        (tmp_path / name).write_text("partial")
    write_json(tmp_path / "metrics.json", {"ok": True})
    assert leftovers(tmp_path) == []
    assert read_json(tmp_path / "metrics.json") == {"ok": True}


# --- 5. a diverging loss stops the run ------------------------------------------------------------

def test_the_divergence_rule():
    _, task, _, _, cfg = toy_fit_setup()
    fit_module.check_divergence(task, [1.0], cfg)
    fit_module.check_divergence(task, [1.0, 0.5, 99.0], cfg)
    fit_module.check_divergence(task, [-2.0, 1e6], cfg)  # no positive scale to compare with
    with pytest.raises(fit_module.DivergedLossError,
                       match=r"^multilabel task's loss \(BCELoss\) diverged: its epoch 3 mean 150 is more "
                             r"than 100x epoch 1's 1 \(epoch means: 1, 0\.5, 150\); lower the learning"):
        fit_module.check_divergence(task, [1.0, 0.5, 150.0], cfg)


def test_a_diverging_run_stops_and_is_marked_failed_not_reported(tiny, tmp_path, monkeypatch):
    original = fit_module.train_epoch

    def blows_up_in_epoch_2(model, task, batches, optimizer, scheduler, cfg, epoch):
        if epoch == 1:
            return 5000.0  # the untrained model's loss on these labels is below 1
        return original(model, task, batches, optimizer, scheduler, cfg, epoch)

    monkeypatch.setattr(fit_module, "train_epoch", blows_up_in_epoch_2)
    with pytest.raises(fit_module.DivergedLossError, match=r"its epoch 2 mean 5000 is more than 100x epoch 1's "
                                                        r"([\d.]+) \(epoch means: \1, 5000\)"):
        run_annotation(tiny.replace(epochs=2), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    failed = read_json(tmp_path / "failed.json")
    assert failed["error"] == "DivergedLossError" and "epoch 2" in failed["message"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert len(state["history"]) == 1  # the diverged epoch is not kept to resume from
    with pytest.raises(RuntimeError, match="this run failed: .*diverged"):
        load_run(tmp_path)
    # The same run once the cause is gone resumes, succeeds and drops the marker.
    monkeypatch.setattr(fit_module, "train_epoch", original)
    assert run_annotation(tiny.replace(epochs=2), tmp_path)["selection"]["epoch"] in (1, 2)
    assert not (tmp_path / "failed.json").exists() and (tmp_path / "metrics.json").exists()


# --- 6. a folder holding another config: one rule for run_annotation and the grid runner ------------

def test_a_folder_that_never_trained_is_taken_and_one_that_trained_refused_by_both_entry_points(
        tmp_path, monkeypatch, capsys):
    [run] = grid("smoke", papers=["p1"])
    # As the grid runner builds it from the command line below.
    run = dataclasses.replace(run, config=run.config.replace(device="cpu", progress=False))
    run_dir = tmp_path / "smoke" / "runs" / run.path
    trainings = dict(PAPERS["p1"].trainings(run))
    assert sorted(trainings) == ["bce", "cnn_rnn"]
    for variant, cfg in trainings.items():  # runs of another config, both failed before an epoch
        run_module.claim_run_dir(cfg.replace(lr=0.5), run_dir / variant)
    (run_dir / "cnn_rnn" / "checkpoint.pt").write_bytes(b"")  # ...but this one trained an epoch

    assert reproduce.stale(run, run_dir) == [
        f"{run_dir / 'cnn_rnn' / 'config.json'} holds another config (lr: 0.002 vs 0.5, asked vs held)"]
    with pytest.raises(ValueError, match=r"cnn_rnn/config\.json: this folder holds a run with another "
                                         r"config \(lr: 0\.002 vs 0\.5, ours vs the folder's\)"):
        run_module.claim_run_dir(trainings["cnn_rnn"], run_dir / "cnn_rnn")
    run_module.claim_run_dir(trainings["bce"], run_dir / "bce")
    assert TrainConfig.from_dict(read_json(run_dir / "bce" / "config.json")) == trainings["bce"]

    executed = []
    monkeypatch.setattr(reproduce, "execute", lambda source, target, parameters: executed.append(target.name))
    argv = ["--profile", "smoke", "--papers", "p1", "--reports", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert reproduce.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{run_dir / 'cnn_rnn' / 'config.json'} holds another config (lr: 0.002 vs 0.5" in err
    assert "bce/config.json" not in err and executed == ["99_report.ipynb"]
    (run_dir / "cnn_rnn" / "checkpoint.pt").unlink()  # never trained after all: the folder is free
    assert reproduce.main(argv) == 0 and executed[1:] == ["02_cnn_rnn.ipynb", "99_report.ipynb"]


# --- 7. a data root that holds no synthetic set --------------------------------------------------

@pytest.fixture
def small_default_set(monkeypatch, tmp_path):
    """The synthetic set's defaults made tiny (10 images of 32 px) and its cache in ``tmp_path``."""
    monkeypatch.setenv("ANNOTLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(synthetic.generate_synthetic, "__kwdefaults__",
                        {"num_images": 10, "image_size": 32, "seed": 0})
    monkeypatch.setattr(synthetic.default_synthetic_root, "__defaults__", (10, 32, 0))
    return synthetic.default_synthetic_root()


def test_generating_the_synthetic_set_into_a_given_folder_is_a_warning_naming_it(small_default_set, tmp_path,
                                                                                  caplog):
    root = tmp_path / "synthetik"  # meant: an existing set, mistyped
    with caplog.at_level(logging.INFO, logger="annotlib.data.synthetic"):
        assert len(load_split("synthetic", "test", root)) == 2
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{root}: no synthetic set there, generating one (10 images of 32 px, seed 0)")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="annotlib.data.synthetic"):
        assert len(load_split("synthetic", "test", root)) == 2  # there now: read, not generated again
        # The default folder, in the cache, is generated on first use by design: said, not warned.
        assert len(load_split("synthetic", "test")) == 2
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"{small_default_set}: no synthetic set there, generating one (10 images of 32 px, seed 0)")]


def test_a_synthetic_data_root_without_a_parent_or_holding_something_else_is_an_error_naming_it(
        small_default_set, tmp_path):
    root = tmp_path / "no-such-folder" / "synthetic"
    with pytest.raises(DataError, match=rf"^{re.escape(str(root))}: no such folder, nor its parent "
                                        rf"{re.escape(str(root.parent))} \(a mistyped data_root\?\)"):
        load_split("synthetic", "train", root)
    assert not root.parent.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not images")
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'other'))}: exists and is not a synthetic set"):
        load_split("synthetic", "train", tmp_path / "other")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]
    with pytest.raises(DataError, match=rf"^{re.escape(str(FIXTURES / 'aia' / 'train.json'))}: not a generated "
                                        r"synthetic set"):  # an AIA set: the same layout, other data
        load_split("synthetic", "train", FIXTURES / "aia")
