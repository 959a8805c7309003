"""The same run under torchrun with 2 CPU processes (gloo, data-parallel) and in one process."""

import json
import subprocess
import sys

import numpy as np
import pytest

from annotlib.data.synthetic import generate_synthetic
from annotlib.io import read_json
from annotlib.train import TrainConfig, run_annotation


@pytest.mark.slow
def test_two_processes_reach_the_metrics_of_one(tmp_path):
    root = generate_synthetic(tmp_path / "synthetic", num_images=600, image_size=64, seed=5)
    cfg = TrainConfig(dataset="synthetic", data_root=str(root), image_size=64, backbone="resnet10t", epochs=3,
                      batch_size=32, lr=3e-3, normalize="dataset", loss="unsymmetric", progress=False, seed=0,
                      device="cpu")
    single = run_annotation(cfg, tmp_path / "single")
    (tmp_path / "ddp").mkdir()
    (tmp_path / "ddp" / "requested.json").write_text(json.dumps(cfg.to_dict()))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    "-m", "annotlib.train", "--config", str(tmp_path / "ddp" / "requested.json"),
                    "--out", str(tmp_path / "ddp")], check=True, timeout=600)
    ddp = read_json(tmp_path / "ddp" / "metrics.json")
    history = (tmp_path / "ddp" / "history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs, written once (by rank 0)
    # Each rank saw half of every global batch of 32; batch-norm statistics are per rank and
    # dropout draws differ, so the numbers agree within noise, not bit for bit.
    assert abs(ddp["test"]["mAP"] - single["test"]["mAP"]) < 0.03, (ddp["test"]["mAP"], single["test"]["mAP"])
    assert ddp["selection"]["epoch"] >= 1 and ddp["num_images"] == single["num_images"]


# Run by torchrun as each of 2 CPU ranks (gloo); writes what the parent test checks to rank<r>.pt.
WORKER = '''
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from annotlib.data import DeviceBatches, Split
from annotlib.losses import create_loss
from annotlib.tasks import MultiLabelTask
from annotlib.train import TrainConfig
from annotlib.train import distributed
from annotlib.train.loop import fit, predict

out = Path(sys.argv[1])
ctx = distributed.setup(torch.device("cpu"))
model = torch.load(out / "model.pt", weights_only=False)
seen = {}
# What the first training step gets (the batch's images) and draws (the dropout mask).



def first_input(module, args):
    seen.setdefault("input", args[0].clone())


def first_mask(module, args, y):
    seen.setdefault("mask", y != 0)


model.register_forward_pre_hook(first_input)
model[-2].register_forward_hook(first_mask)

# Every training image the same gradient, so what a rank's batch shows is its augmentation alone.
ramp = np.broadcast_to(np.arange(16, dtype=np.uint8)[:, None, None] * 16, (16, 16, 3))
same = np.ascontiguousarray(np.broadcast_to(ramp, (32, 16, 16, 3)))
labels = torch.arange(32)[:, None].remainder(2).repeat(1, 3).to(torch.int8)
cfg = TrainConfig(epochs=1, batch_size=16, progress=False, channels_last=False, seed=5, scheduler="none")
train = DeviceBatches(same, {"labels": labels}, batch_size=8, train=True, crop_scale=(0.2, 1.0), hflip=True,
                      vflip=True, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
split = Split("toy", "val", ["a", "b", "c"], [f"{i}.png" for i in range(32)], labels=labels)
val = DeviceBatches(same, {}, batch_size=8, rank=ctx.rank, world_size=ctx.world_size)
history = fit(model, MultiLabelTask(create_loss("bce")), train, val, split, cfg, out / "run", ctx=ctx)

images = np.load(out / "images.npy", mmap_mode="r")
sharded = DeviceBatches(images, {}, batch_size=4, rank=ctx.rank, world_size=ctx.world_size, resident=False)
outputs = predict(model, lambda m, x: {"logits": m(x), "rank": [ctx.rank] * len(x)}, sharded, bf16=False)

gpu = distributed.Context(torch.device("cuda", 0), ctx.rank, ctx.world_size)
try:
    distributed.sync_batchnorm(True, model, 8, ctx)
    refused = ""
except ValueError as err:
    refused = str(err)
# DDP takes SyncBatchNorm on GPU modules only: stubbed here, to see what wrap hands it on these CPUs.
torch.nn.parallel.DistributedDataParallel = lambda module, device_ids: module
wrapped = distributed.wrap(model, ctx, sync_bn=True)
torch.save({"input": seen["input"], "mask": seen["mask"], "outputs": outputs, "weights": model.state_dict(),
            "history": history, "refused": refused,
            "rule": {"cpu 8": distributed.sync_batchnorm("auto", model, 8, ctx),
                     "cuda 8": distributed.sync_batchnorm("auto", model, 8, gpu),
                     "cuda 32": distributed.sync_batchnorm("auto", model, 32, gpu),
                     "cuda 8 off": distributed.sync_batchnorm(False, model, 8, gpu),
                     "cuda 8 no bn": distributed.sync_batchnorm("auto", nn.Linear(2, 2), 8, gpu)},
            "sync_layers": sum(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules())},
           out / f"rank{ctx.rank}.pt")
'''


def test_two_ranks_draw_their_own_augmentation_and_dropout_and_shard_evaluation(tmp_path):
    import torch
    from torch import nn

    from annotlib.data import DeviceBatches
    from annotlib.train.loop import predict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(4, 3))
    torch.save(model, tmp_path / "model.pt")
    images = np.random.default_rng(2).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)  # 11: shards padded
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "worker.py").write_text(WORKER)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29534",
                    str(tmp_path / "worker.py"), str(tmp_path)], check=True, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # SyncBatchNorm under the rule: GPUs with a per-rank batch below 32, a model with batch norm.
    assert ranks[0]["rule"] == {"cpu 8": False, "cuda 8": True, "cuda 32": False, "cuda 8 off": False,
                                "cuda 8 no bn": False}
    assert "sync_bn: SyncBatchNorm needs CUDA devices" in ranks[0]["refused"]
    assert ranks[0]["sync_layers"] == 1
    # The same images on both ranks: different batches are different augmentation draws.
    assert not torch.equal(ranks[0]["input"], ranks[1]["input"])
    assert ranks[0]["mask"].shape == ranks[1]["mask"].shape and not torch.equal(ranks[0]["mask"], ranks[1]["mask"])
    # DDP kept the ranks' weights equal, and the sharded validation gave both the same history.
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    strip = [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k} for row in ranks[0]["history"]]
    assert strip == [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k}
                     for row in ranks[1]["history"]]

    # Sharded evaluation, gathered on every rank in the split's order, equals one process's.
    model.load_state_dict(ranks[0]["weights"])
    single = predict(model, lambda m, x: m(x), DeviceBatches(images, {}, batch_size=4), bf16=False)
    for rank in ranks:
        gathered = rank["outputs"]
        torch.testing.assert_close(gathered["logits"], single)
        assert gathered["rank"] == [i % 2 for i in range(11)]  # sample i was predicted by rank i mod 2


@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_a_bad_sync_bn_setting_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match=rf'^sync_bn must be "auto", true or false, got {value!r}$'):
        TrainConfig(sync_bn=value)
    assert all(TrainConfig(sync_bn=ok).sync_bn == ok for ok in ("auto", True, False))
