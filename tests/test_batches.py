import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from annotlib.data import DeviceBatches, Split
from annotlib.data.batches import crop_flip_theta, random_resized_crop_boxes
from annotlib.data.samplers import MPerClass


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)


def unnormalize(x, batches):
    return x * batches.std + batches.mean


def test_evaluation_batches_are_the_normalized_images_in_order(images):
    targets = torch.arange(10)[:, None]
    batches = DeviceBatches(images, {"labels": targets}, batch_size=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    xs, ys, idx = zip(*((b["image"], b["labels"], b["index"]) for b in batches))
    assert [len(y) for y in ys] == [4, 4, 2]
    assert torch.equal(torch.cat(idx), torch.arange(10)) and torch.equal(torch.cat(ys), targets)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - torch.tensor([.5, .4, .3])[:, None, None]) \
        / torch.tensor([.2, .25, .3])[:, None, None]
    assert torch.allclose(torch.cat(xs), expected, atol=1e-5)


def test_flips_are_per_sample_and_seeded(images):
    batches = DeviceBatches(images, {}, batch_size=10, train=True, hflip=True, vflip=True, seed=3)
    first = next(iter(batches))
    x, idx = first["image"], first["index"]
    x = unnormalize(x, batches).round()
    src = torch.from_numpy(images).permute(0, 3, 1, 2).float()[idx]
    kinds = []
    for a, b in zip(x, src):
        options = [b, b.flip(2), b.flip(1), b.flip(1).flip(2)]
        kinds.append(next(i for i, o in enumerate(options) if torch.equal(a, o)))
    assert len(set(kinds)) > 1  # not the same flip for the whole batch
    again = next(iter(batches))["image"]
    assert torch.equal(unnormalize(again, batches).round(), x)
    batches.set_epoch(1)
    assert not torch.equal(next(iter(batches))["index"], idx)


def test_theta_resamples_exactly_the_box_and_its_mirror():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    boxes = torch.tensor([[3, 5, 8, 8], [0, 8, 8, 8]])
    theta = crop_flip_theta(boxes, 16, torch.tensor([False, True]), torch.tensor([False, True]))
    grid = F.affine_grid(theta, [2, 3, 8, 8], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    assert torch.allclose(out[0], x[0, :, 3:11, 5:13], atol=1e-3)
    assert torch.allclose(out[1], x[1, :, 0:8, 8:16].flip(1).flip(2), atol=1e-3)


@pytest.mark.parametrize("scale, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.5, 2.0)),
                                          ((0.9, 1.0), (2.0, 3.0))])
def test_crop_boxes_follow_torchvisions_distribution(scale, ratio):
    n, size = 4000, 64
    ours = random_resized_crop_boxes(n, size, scale, ratio, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    image = torch.zeros(3, size, size)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)])
    for k, name in enumerate(("top", "left", "height", "width")):
        p = ks_2samp(ours[:, k].numpy(), theirs[:, k].numpy()).pvalue
        assert p > 1e-3, f"{name}: KS p-value {p}"
    assert (ours[:, 0] + ours[:, 2] <= size).all() and (ours[:, 1] + ours[:, 3] <= size).all()


def test_shards_cover_every_sample_once_per_rank(images):
    seen = []
    for rank in range(3):
        batches = DeviceBatches(images, {}, batch_size=2, train=True, seed=1, rank=rank, world_size=3)
        seen.append(torch.cat([b["index"] for b in batches]))
    assert all(len(s) == 4 for s in seen)
    assert set(torch.cat(seen).tolist()) == set(range(10))


def test_flip_draws_match_torchvisions_random_flips():
    """Horizontal and vertical flips each with probability 1/2, independently, as torchvision's
    RandomHorizontalFlip and RandomVerticalFlip: a chi-square test on the four combinations."""
    from scipy.stats import chi2_contingency
    from torchvision.transforms import RandomHorizontalFlip, RandomVerticalFlip

    n = 4000
    batches = DeviceBatches(np.zeros((n, 4, 4, 3), np.uint8), {}, batch_size=n, train=True,
                            hflip=True, vflip=True, seed=0)
    _, ours = batches._augmentation(n, torch.Generator().manual_seed(0))
    ours = ours[:, 0].long() * 2 + ours[:, 1].long()
    torch.manual_seed(0)
    marker = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # where the corner goes tells the flips
    h, v = RandomHorizontalFlip(), RandomVerticalFlip()
    theirs = torch.tensor([int(v(h(marker))[0].argmax()) for _ in range(n)])  # 0 none, 1 h, 2 v, 3 both
    theirs = (theirs % 2) * 2 + theirs // 2
    table = [torch.bincount(ours, minlength=4).tolist(), torch.bincount(theirs, minlength=4).tolist()]
    assert chi2_contingency(table).pvalue > 1e-3, table
    assert all(abs(c - n / 4) < 4 * (n * 3 / 16) ** 0.5 for c in table[0]), table[0]


def test_batches_are_contiguous_in_the_layout_asked_for(images):
    for channels_last in (False, True):
        batches = DeviceBatches(images, {}, batch_size=4, channels_last=channels_last)
        x = next(iter(batches))["image"]
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=layout)


def test_fields_of_the_wrong_length_are_named(images):
    with pytest.raises(ValueError, match=r"category_ids: 9 rows for 10 images"):
        DeviceBatches(images, {"category_ids": torch.zeros(9)}, batch_size=4)


def test_m_per_class_batches_hold_every_class_m_times_over_many_batches():
    category_ids = torch.tensor([0] * 30 + [1] * 7 + [2] * 3 + [3] * 60)
    sampler = MPerClass(category_ids, m=4, batch_size=20)
    images = np.zeros((len(category_ids), 4, 4, 3), np.uint8)
    batches = DeviceBatches(images, {"category_ids": category_ids}, batch_size=20, train=True, sampler=sampler)
    assert len(batches) == 5
    for epoch in range(20):
        batches.set_epoch(epoch)
        seen = torch.zeros(len(category_ids))
        for batch in batches:
            counts = torch.bincount(batch["category_ids"].long(), minlength=4)
            assert (counts >= 4).all() and counts.sum() == 20, counts
            assert (counts % 4 == 0).all()
            seen += torch.bincount(batch["index"], minlength=len(category_ids))
        # A small class repeats its images, each about equally often within the epoch.
        for k in (1, 2):
            assert seen[category_ids == k].min() >= 1
            assert seen[category_ids == k].max() - seen[category_ids == k].min() <= 1


def test_m_per_class_refuses_a_batch_that_cannot_hold_every_class():
    with pytest.raises(ValueError, match=r"batch_size 12 must be a multiple of m=4 and at least m x 4 classes = 16"):
        MPerClass(torch.tensor([0, 1, 2, 3] * 5), m=4, batch_size=12)
    with pytest.raises(ValueError, match=r"classes \[1\] have no sample"):
        MPerClass(torch.tensor([0, 2, 2, 0]), m=1, batch_size=4)


@pytest.fixture
def mapped(tmp_path):
    """A 37-image cache as the library reads it: a memory-mapped .npy file."""
    data = np.random.default_rng(4).integers(0, 256, (37, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "cache.npy", data)
    return np.load(tmp_path / "cache.npy", mmap_mode="r")


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "annotlib-prefetch" and t.is_alive()]


@pytest.mark.parametrize("options", [{"train": True, "hflip": True, "vflip": True},
                                     {"train": True, "hflip": True, "crop_scale": (0.3, 1.0), "out_size": 8},
                                     {"train": True, "rank": 1, "world_size": 2}, {"train": False}])
def test_streamed_batches_equal_resident_ones(mapped, options):
    labels = torch.arange(37)[:, None] * torch.ones(1, 2)
    made = [DeviceBatches(mapped, {"labels": labels}, batch_size=8, seed=7, resident=resident, **options)
            for resident in (True, False)]
    assert [b.resident for b in made] == [True, False]
    for epoch in range(2):
        for b in made:
            b.set_epoch(epoch)
        pairs = list(zip(*made, strict=True))
        assert len(pairs) == len(made[0]) > 0
        for resident, streamed in pairs:
            assert resident.keys() == streamed.keys()
            for key in resident:
                assert torch.equal(resident[key], streamed[key]), key


def test_training_is_bitwise_the_same_streamed_or_resident(mapped, tmp_path):
    from annotlib.losses import create_loss
    from annotlib.tasks import MultiLabelTask
    from annotlib.train import TrainConfig
    from annotlib.train.loop import fit

    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 2, (37, 3))).to(torch.int8)
    split = Split("toy", "val", ["a", "b", "c"], [f"{i}.png" for i in range(37)], labels=labels)
    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, channels_last=False, lr=1e-2, seed=3)
    results = []
    for resident in (True, False):
        def batches(train, resident=resident):
            return DeviceBatches(mapped, {"labels": labels}, batch_size=8, train=train, hflip=True,
                                 crop_scale=(0.5, 1.0), seed=cfg.seed, resident=resident)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(4, 3))
        history = fit(model, MultiLabelTask(create_loss("bce")), batches(True), batches(False), split, cfg,
                      tmp_path / str(resident))
        results.append(([{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k}
                         for row in history], model.state_dict()))
    (rows_r, weights_r), (rows_s, weights_s) = results
    assert rows_r == rows_s and len(rows_r) == 2
    assert all(torch.equal(weights_r[k], weights_s[k]) for k in weights_r)


def test_the_prefetch_thread_ends_on_break_and_on_errors(mapped):
    batches = DeviceBatches(mapped, {}, batch_size=2, train=True, hflip=True, resident=False)
    for _ in batches:
        assert len(prefetch_threads()) == 1
        break
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="the step failed"):
        for _ in batches:
            raise RuntimeError("the step failed")
    assert not prefetch_threads()

    class Unreadable(np.ndarray):
        def __getitem__(self, row):
            raise OSError("the cache file went away")

    with pytest.raises(OSError, match="the cache file went away"):
        list(DeviceBatches(np.asarray(mapped).view(Unreadable), {}, batch_size=2, resident=False))
    assert not prefetch_threads()


def test_a_split_stays_resident_only_within_the_memory_budget(mapped, monkeypatch):
    import annotlib.data.batches as module

    for free, resident in ((mapped.nbytes / module.RESIDENT_FRACTION, True),
                           (mapped.nbytes / module.RESIDENT_FRACTION - 1, False)):
        monkeypatch.setattr(module, "available_memory", lambda device, free=free: free)
        assert DeviceBatches(mapped, {}, batch_size=4).resident is resident
        assert DeviceBatches(mapped, {}, batch_size=4, resident=not resident).resident is not resident


def test_each_rank_draws_its_own_augmentations():
    # Every image the same gradient: what a batch shows depends on its crops and flips alone.
    ramp = np.broadcast_to(np.arange(16, dtype=np.uint8)[:, None, None] * 16, (16, 16, 3))
    same = np.ascontiguousarray(np.broadcast_to(ramp, (10, 16, 16, 3)))
    shown = [next(iter(DeviceBatches(same, {}, batch_size=5, train=True, crop_scale=(0.2, 1.0), hflip=True,
                                     vflip=True, seed=1, rank=rank, world_size=2)))["image"] for rank in (0, 1)]
    assert not torch.equal(*shown)
    again = next(iter(DeviceBatches(same, {}, batch_size=5, train=True, crop_scale=(0.2, 1.0), hflip=True,
                                    vflip=True, seed=1, rank=1, world_size=2)))["image"]
    assert torch.equal(again, shown[1])  # and each rank's draws follow from the seed


def test_a_runs_outputs_and_embeddings_are_computed_once_per_weights_streamed_or_not(tmp_path, monkeypatch):
    from annotlib.data.synthetic import generate_synthetic
    from annotlib.io import atomic_torch_save
    from annotlib.train import TrainConfig
    from annotlib.train import run as run_module

    monkeypatch.setenv("ANNOTLIB_CACHE_DIR", str(tmp_path / "cache"))
    root = generate_synthetic(tmp_path / "synthetic", num_images=60, image_size=32, seed=1)
    cfg = TrainConfig(dataset="synthetic", data_root=str(root), image_size=32, backbone="resnet10t",
                      eval_batch_size=8, progress=False, device="cpu", bf16=False)
    run = run_module.prepare_run(cfg)
    calls = []
    real_predict = run_module.predict
    monkeypatch.setattr(run_module, "predict", lambda *a, **k: calls.append(1) or real_predict(*a, **k))
    outputs, embeddings = run.outputs("val"), run.embeddings("val")
    assert run.outputs("val") is outputs and run.embeddings("val") is embeddings and len(calls) == 2
    streamed = run_module.AnnotationRun(**{**vars(run), "_outputs": {}, "_embeddings": {}, "resident": False})
    assert streamed.batches("val").resident is False and run.batches("val").resident is True
    assert torch.equal(streamed.outputs("val"), outputs) and torch.equal(streamed.embeddings("val"), embeddings)

    atomic_torch_save({k: v + 0.01 if v.is_floating_point() else v for k, v in run.model.state_dict().items()},
                      tmp_path / "other.pt")
    run.load_weights(tmp_path / "other.pt")
    assert not torch.equal(run.outputs("val"), outputs) and not torch.equal(run.embeddings("val"), embeddings)


def test_releasing_a_maps_pages_keeps_what_it_reads_and_a_private_maps_changes(tmp_path):
    from annotlib.data.batches import release_pages

    data = np.random.default_rng(3).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "cache.npy", data)
    shared = np.load(tmp_path / "cache.npy", mmap_mode="r")
    assert np.array_equal(shared[10:20], data[10:20])
    release_pages(shared[10:20])  # a view releases its whole map
    assert np.array_equal(shared, data)
    private = np.load(tmp_path / "cache.npy", mmap_mode="c")
    private[0] = 7
    release_pages(private)
    assert (private[0] == 7).all() and np.array_equal(private[1:], data[1:])
