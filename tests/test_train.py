import csv

import pytest
import torch

from annotlib.data import load_split
from annotlib.data.synthetic import generate_synthetic
from annotlib.io import read_json
from annotlib.metrics import annotation_metrics, mean_average_precision
from annotlib.train import NonFiniteLossError, TrainConfig, run_annotation
from annotlib.train import loop as fit_module
from annotlib.train import run as run_module


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=600, image_size=64, seed=5)


@pytest.fixture
def small(synthetic_root):
    return TrainConfig(dataset="synthetic", data_root=str(synthetic_root), image_size=64, backbone="resnet10t",
                       epochs=3, batch_size=32, lr=3e-3, normalize="dataset", loss="unsymmetric",
                       progress=False, seed=0)


def history_without_timings(path):
    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if not k.startswith("train_") or k == "train_loss"} for r in rows]


@pytest.mark.slow
def test_short_run_beats_the_label_prior_and_writes_its_files(small, tmp_path):
    metrics = run_annotation(small.replace(epochs=4), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "history.csv", "metrics.json",
                                                      "best.pt", "checkpoint.pt", "task.json"}
    train, test = (load_split("synthetic", s, small.data_root) for s in ("train", "test"))
    prior = train.labels.float().mean(0).expand(len(test), -1)  # every image scored by label frequency
    prior_map = mean_average_precision(prior, test.labels)
    # Four epochs from scratch on 480 images: about 0.22 against the prior's 0.15 (120 test images).
    assert metrics["test"]["mAP"] > prior_map + 0.05, (metrics["test"]["mAP"], prior_map)
    prior_cf1 = annotation_metrics(prior, test.labels, 0.5)["CF1"]
    assert metrics["test"]["CF1@tuned"] > prior_cf1
    assert len(read_json(tmp_path / "task.json")["thresholds"]) == train.num_classes
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    best = max(rows, key=lambda r: float(r["val_mAP"]))
    assert metrics["selection"] == {"split": "val", "metric": "mAP", "mode": "max", "epoch": int(best["epoch"])}
    assert len(rows) == 4 and metrics["fingerprint"] == small.replace(epochs=4).fingerprint()
    assert metrics["config"] == small.replace(epochs=4).to_dict() and metrics["variant"] == tmp_path.name
    assert read_json(tmp_path / "config.json")["loss"] == "unsymmetric"
    device = fit_module.resolve_device(small.device)
    assert metrics["runtime"] == {"device": str(device), "world_size": 1, "channels_last": device.type == "cpu",
                                  "bf16_autocast": fit_module.native_bf16(device)}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(small, tmp_path, monkeypatch):
    full = run_annotation(small, tmp_path / "full")

    original = fit_module.train_epoch

    def killed_in_epoch_3(model, task, batches, optimizer, scheduler, cfg, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(model, task, batches, optimizer, scheduler, cfg, epoch)

    monkeypatch.setattr(fit_module, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run_annotation(small, tmp_path / "resumed")
    assert len(list(csv.DictReader(open(tmp_path / "resumed" / "history.csv")))) == 2
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(fit_module, "train_epoch", original)
    resumed = run_annotation(small, tmp_path / "resumed")
    assert history_without_timings(tmp_path / "full" / "history.csv") == \
        history_without_timings(tmp_path / "resumed" / "history.csv")
    for key in ("val", "test", "selection"):
        assert resumed[key] == full[key]


def test_finished_run_is_not_trained_again_and_a_changed_config_is_refused(small, tmp_path, monkeypatch):
    cfg = small.replace(epochs=1)
    first = run_annotation(cfg, tmp_path)
    monkeypatch.setattr(run_module, "fit", None)  # would fail if called
    assert run_annotation(cfg.replace(progress=True), tmp_path) == first
    with pytest.raises(ValueError, match=r"config\.json.*another config \(lr: 1\.0 vs 0\.003, ours vs"):
        run_annotation(cfg.replace(lr=1.0), tmp_path)


def test_non_finite_loss_stops_with_where(small, tmp_path, monkeypatch):
    from annotlib.tasks import MultiLabelTask
    calls = {"n": 0}
    original = MultiLabelTask.training_step

    def poisoned(self, model, batch):
        loss = original(self, model, batch)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(MultiLabelTask, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"multilabel task's loss \(UnsymmetricLoss\) is nan at epoch 1, "
                                                 r"step 3 of \d+, "
                                                 r"batch sample indices \[\d+"):
        run_annotation(small, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_labels_without_tuning_positives_keep_the_default_threshold():
    from annotlib.metrics import tune_thresholds
    from annotlib.tasks.multilabel import run_thresholds
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 4, generator=g)
    targets = (torch.rand(50, 4, generator=g) < 0.3).long()
    targets[:, 2] = 0
    thresholds, untunable = run_thresholds(scores, targets)
    assert untunable.tolist() == [False, False, True, False]
    assert thresholds[2] == 0.5 and tune_thresholds(scores, targets)[2] == 0.05
    assert torch.equal(thresholds[[0, 1, 3]], tune_thresholds(scores, targets)[[0, 1, 3]])


def test_bf16_autocast_only_where_the_device_has_bf16_arithmetic(monkeypatch):
    cpu, layer, x = torch.device("cpu"), torch.nn.Linear(4, 2), torch.randn(3, 4)
    for avx512_bf16, amx, native in [(True, False, True), (False, True, True), (False, False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert fit_module.native_bf16(cpu) is native
        for bf16 in (True, False):
            with fit_module.autocast(cpu, bf16):
                dtype = layer(x).dtype
            assert dtype == (torch.bfloat16 if bf16 and native else torch.float32), (avx512_bf16, amx, bf16)


def test_channels_last_default_follows_the_device_and_an_explicit_choice_wins():
    cfg = TrainConfig()
    assert fit_module.use_channels_last(cfg, torch.device("cpu"))
    assert not fit_module.use_channels_last(cfg, torch.device("cuda"))
    for device in ("cpu", "cuda"):
        for explicit in (True, False):
            assert fit_module.use_channels_last(cfg.replace(channels_last=explicit), torch.device(device)) is explicit


def test_prepared_model_and_batches_share_the_devices_layout(small):
    for channels_last, layout in [(None, torch.channels_last), (False, torch.contiguous_format)]:
        run = run_module.prepare_run(small.replace(channels_last=channels_last), torch.device("cpu"))
        conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
        x = next(iter(run.batches("train", train=True)))["image"]
        assert conv.weight.is_contiguous(memory_format=layout) and x.is_contiguous(memory_format=layout)
        assert conv.weight.device.type == "cpu"


def test_a_one_step_warm_up_is_refused_before_training(tmp_path):
    from annotlib.data import DeviceBatches, Split
    from annotlib.losses import create_loss
    from annotlib.tasks import MultiLabelTask

    labels = torch.tensor([[1, 0], [0, 1]], dtype=torch.int8).repeat(10, 1)
    split = Split("toy", "val", ["a", "b"], [f"{i}.png" for i in range(20)], labels=labels)
    batches = DeviceBatches(torch.zeros(20, 8, 8, 3, dtype=torch.uint8).numpy(), {"labels": labels},
                            batch_size=4, train=True)  # 5 steps per epoch
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    task = MultiLabelTask(create_loss("bce"))
    cfg = TrainConfig(epochs=1, pct_start=0.2, progress=False, channels_last=False)
    with pytest.raises(ValueError, match=r"pct_start 0.2 of 5 steps is a one-step warm-up"):
        fit_module.fit(model, task, batches, batches, split, cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert len(fit_module.fit(model, task, batches, batches, split, cfg.replace(pct_start=0.4), tmp_path)) == 1


def test_labels_with_fewer_than_k_tuning_positives_keep_the_default_threshold():
    from annotlib.losses import create_loss
    from annotlib.metrics import tune_thresholds
    from annotlib.tasks.multilabel import MultiLabelTask, run_thresholds
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 3, generator=g)
    targets = torch.zeros(40, 3, dtype=torch.long)
    targets[:5, 0], targets[:2, 1], targets[:3, 2] = 1, 1, 1  # 5, 2 and 3 positives
    thresholds, untunable = run_thresholds(scores, targets, min_positives=3)
    assert untunable.tolist() == [False, True, False] and thresholds[1] == 0.5
    assert torch.equal(thresholds[[0, 2]], tune_thresholds(scores, targets)[[0, 2]])
    with pytest.raises(ValueError, match="min_tuning_positives must be an integer >= 1, got 0"):
        MultiLabelTask(create_loss("bce"), min_tuning_positives=0)
    task = MultiLabelTask(create_loss("bce"), min_tuning_positives=3)
    assert "labels with fewer than 3 positives there keep 0.5" in task.protocol()[-1]
