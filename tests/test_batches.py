import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from annotlib.data import DeviceBatches
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
