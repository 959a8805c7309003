"""P3 (Durand et al. 2019), learning with partial labels: partial-BCE, its two baselines and
the label-dropping protocol. Targets: 1 positive, 0 negative, -1 unknown."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from annotlib.data.labels import keep_label_proportion
from annotlib.losses import (
    BCELoss,
    KnownLabelsBCELoss,
    PartialBCELoss,
    UnknownAsNegativeBCELoss,
    create_loss,
    partial_bce_loss,
)


def log_sig(x):
    return -math.log1p(math.exp(-x))


def ref_partial_bce_image(x, y, alpha=-4.45, beta=5.45, gamma=1.0):
    """P3's l(x, y) for one image, written out: g(p_y) / C times the BCE summed over the
    known labels."""
    c = len(x)
    known = [t for t in y if t >= 0]
    g = alpha * (len(known) / c) ** gamma + beta
    total = sum(-log_sig(a) if t == 1 else -log_sig(-a) for a, t in zip(x, y) if t >= 0)
    return g / c * total


X = [[1.5, -0.5, 2.0, -3.0], [0.3, -1.2, 0.0, 4.0], [-2.0, 0.7, 1.1, -0.4]]
Y = [[1, 0, -1, -1], [1, 0, 0, 1], [-1, -1, -1, 1]]


# ---- partial-BCE ----

def test_partial_bce_by_hand():
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    # Image 0: 2 of 4 labels known, g(0.5) = -4.45 / 2 + 5.45 = 3.225.
    l0 = 3.225 / 4 * (-log_sig(1.5) - log_sig(0.5))
    assert ref_partial_bce_image(X[0], Y[0]) == pytest.approx(l0, rel=1e-14)
    per_image = torch.tensor([ref_partial_bce_image(a, b) for a, b in zip(X, Y)],
                             dtype=torch.float64)
    none = partial_bce_loss(x, y, reduction="none")
    assert none.shape == (3, 4) and (none[y < 0] == 0).all()
    torch.testing.assert_close(none.sum(1), per_image, rtol=1e-14, atol=0)
    torch.testing.assert_close(partial_bce_loss(x, y, reduction="sum"), per_image.sum())
    torch.testing.assert_close(PartialBCELoss()(x, y), per_image.mean())
    torch.testing.assert_close(create_loss("partial_bce")(x, y), per_image.mean())


def test_partial_bce_weights_are_papers():
    # One known label of 10: p_y = 0.1, g = 5.005 (P3's g(0.1) = 5 with its rounded alpha, beta).
    x = torch.tensor([[0.8] + [5.0] * 9], dtype=torch.float64)
    y = torch.tensor([[1] + [-1] * 9])
    assert partial_bce_loss(x, y).item() == pytest.approx(5.005 / 10 * -log_sig(0.8), rel=1e-14)
    assert -4.45 * 0.1 + 5.45 == pytest.approx(5.0, abs=0.01)
    # Fully labelled: g(1) = 1, so partial-BCE is plain BCE, mean over labels then images.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(7, 5, generator=gen) < 0.4).double()
    torch.testing.assert_close(partial_bce_loss(x, y), F.binary_cross_entropy_with_logits(x, y),
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(partial_bce_loss(x, y, reduction="none"),
                               F.binary_cross_entropy_with_logits(x, y, reduction="none") / 5,
                               rtol=1e-14, atol=0)


def test_partial_bce_other_g():
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    kw = {"alpha": -2.0, "beta": 3.0, "gamma": 2.0}
    want = np.mean([ref_partial_bce_image(a, b, **kw) for a, b in zip(X, Y)])
    assert PartialBCELoss(**kw)(x, y).item() == pytest.approx(want, rel=1e-14)
    assert repr(PartialBCELoss(**kw)) == (
        "PartialBCELoss(alpha=-2.0, beta=3.0, gamma=2.0, reduction='mean')")


def test_partial_bce_image_without_known_label_adds_zero():
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(Y)
    y[1] = -1
    loss = partial_bce_loss(x, y)
    loss.backward()
    # The mean is still over the 3 images: the empty one counts as 0.
    want = (ref_partial_bce_image(X[0], Y[0]) + ref_partial_bce_image(X[2], Y[2])) / 3
    assert loss.item() == pytest.approx(want, rel=1e-14)
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all() and (x.grad[y < 0] == 0).all()
    assert partial_bce_loss(x, -torch.ones(3, 4)).item() == 0.0


def test_partial_bce_gradcheck():
    x = (torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3)
    y = torch.tensor([[1, 0, -1, -1, 0, 1]] * 2 + [[-1] * 5 + [0]] + [[0, 1, 1, 0, 0, 0]])
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: partial_bce_loss(t, y, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda t: partial_bce_loss(t, y), (x,))


# ---- P3's baselines ----

def random_partial(seed=0, shape=(12, 7)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    full = (torch.rand(shape, generator=gen) < 0.3).double()
    partial = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, full)
    return x, full, partial


def test_bce_known_is_bce_over_the_known_entries():
    x, full, partial = random_partial()
    known = partial >= 0
    loss = create_loss("bce_known")
    assert type(loss) is KnownLabelsBCELoss and loss.unknown == "ignore"
    torch.testing.assert_close(loss(x, partial),
                               F.binary_cross_entropy_with_logits(x[known], full[known]))
    torch.testing.assert_close(
        create_loss("bce_known", reduction="sum")(x, partial),
        F.binary_cross_entropy_with_logits(x[known], full[known], reduction="sum"))
    torch.testing.assert_close(BCELoss()(x, partial), loss(x, partial))


def test_bce_unknown_negative_is_bce_with_unknown_set_to_zero():
    x, _, partial = random_partial(1)
    loss = create_loss("bce_unknown_negative")
    assert type(loss) is UnknownAsNegativeBCELoss and loss.unknown == "negative"
    as_negative = partial.clamp(min=0)
    torch.testing.assert_close(loss(x, partial), F.binary_cross_entropy_with_logits(x, as_negative))
    torch.testing.assert_close(create_loss("bce_unknown_negative", reduction="none")(x, partial),
                               F.binary_cross_entropy_with_logits(x, as_negative, reduction="none"))
    assert repr(loss) == "UnknownAsNegativeBCELoss(reduction='mean', unknown='negative')"


@pytest.mark.parametrize("name", ["bce", "bce_known", "bce_unknown_negative", "partial_bce"])
def test_every_p3_loss_is_bce_on_fully_labelled_targets(name):
    x, full, _ = random_partial(2)
    torch.testing.assert_close(create_loss(name)(x, full),
                               F.binary_cross_entropy_with_logits(x, full), rtol=1e-14, atol=0)


def test_baselines_fix_their_unknown_handling():
    with pytest.raises(TypeError):
        create_loss("bce_known", unknown="negative")
    with pytest.raises(ValueError, match="unknown"):
        BCELoss(unknown="positive")
    with pytest.raises(ValueError, match="reduction"):
        create_loss("bce_unknown_negative", reduction="average")


# ---- keep_label_proportion ----

def full_labels(n=400, c=20, seed=0):
    return (torch.rand(n, c, generator=torch.Generator().manual_seed(seed)) < 0.2).to(torch.int8)


@pytest.mark.parametrize("proportion, kept", [(0.1, 2), (0.25, 5), (0.5, 10), (0.9, 18), (0.01, 1)])
def test_keep_label_proportion_keeps_exactly_round_p_c_labels(proportion, kept):
    labels = full_labels()
    partial = keep_label_proportion(labels, proportion, seed=3)
    assert partial.dtype == labels.dtype and partial.shape == labels.shape
    known = partial >= 0
    assert (known.sum(1) == kept).all()
    assert torch.equal(partial[known], labels[known])
    assert (partial[~known] == -1).all()


def test_keep_label_proportion_draws_uniformly_and_independently():
    labels = full_labels(n=20000, c=10)
    known = (keep_label_proportion(labels, 0.3, seed=0) >= 0).double()
    # Each position kept with probability 3/10: 20,000 draws give a std of 0.0032.
    assert (known.mean(0) - 0.3).abs().max() < 0.015
    # Every one of the C(10, 3) = 120 kept sets is equally likely: 166.7 images each,
    # std 12.9, so 5 std either way.
    subsets = (known.long() * 2 ** torch.arange(10)).sum(1)
    counts = torch.bincount(subsets, minlength=1024)
    assert (counts > 0).sum() == math.comb(10, 3)
    assert (counts[counts > 0] - 20000 / 120).abs().max() < 65
    # Consecutive images are drawn independently, not one set repeated or cycled.
    assert (subsets[1:] == subsets[:-1]).double().mean() < 0.02


def test_keep_label_proportion_is_seeded_and_leaves_torch_rng_alone():
    labels = full_labels()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = keep_label_proportion(labels, 0.4, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    assert torch.equal(keep_label_proportion(labels, 0.4, seed=5), a)
    assert not torch.equal(keep_label_proportion(labels, 0.4, seed=6), a)


def test_keep_label_proportion_keeps_unknown_unknown():
    labels = full_labels()
    labels[:, 0] = -1
    partial = keep_label_proportion(labels, 0.5, seed=0)
    assert (partial[:, 0] == -1).all()
    # The draw ignores the label values: the same positions as for the fully known labels.
    same_draw = keep_label_proportion(full_labels(), 0.5, seed=0) >= 0
    assert torch.equal(partial >= 0, same_draw & (labels >= 0))


def test_keep_label_proportion_of_one_is_the_identity():
    labels = full_labels().float()
    labels[3, 4] = -1
    kept = keep_label_proportion(labels, 1.0, seed=0)
    assert torch.equal(kept, labels) and kept is not labels


def test_keep_label_proportion_rejects_bad_arguments():
    labels = full_labels()
    for proportion in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="proportion"):
            keep_label_proportion(labels, proportion, seed=0)
    for dtype in (torch.uint8, torch.bool):
        with pytest.raises(ValueError, match="-1"):
            keep_label_proportion(labels.to(dtype), 0.5, seed=0)
    with pytest.raises(ValueError, match="N x C"):
        keep_label_proportion(labels[0], 0.5, seed=0)
