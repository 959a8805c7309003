"""P2: the sentiment-vector head and the sentiment-constraint / triplet losses, against
hand-written per-triplet loops and hand-computed values."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from annotlib.losses.sentiment import (
    SentimentLoss,
    sample_related_negative,
    sentiment_constraint_loss,
    triplet_loss,
    wheel_weights,
)
from annotlib.models.sentiment import SentimentVectorHead, gram_matrix, stage_channels

# Four emotions, two polarities (0, 1 | 2, 3), on a cyclic wheel of four: dis = 1 + steps.
POLARITY = torch.tensor([0, 0, 1, 1])
WHEEL = torch.tensor([[1., 2., 3., 2.],
                      [2., 1., 2., 3.],
                      [3., 2., 1., 2.],
                      [2., 3., 2., 1.]])


def batch(seed: int, b: int = 12, dim: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(b) % 4
    y = y[torch.randperm(b, generator=g)]
    e = F.normalize(torch.randn(b, dim, generator=g, dtype=dtype), dim=1).requires_grad_()
    return e, y


def ref_dstar(e, y, wheel=WHEEL):
    """D*(i, j) by a loop: the plain squared difference over the wheel distance."""
    b = len(y)
    return [[((e[i] - e[j]) ** 2).sum() / wheel[y[i], y[j]] for j in range(b)] for i in range(b)]


def mean_or_zero(terms, like):
    return sum(terms) / len(terms) if terms else like.sum() * 0


def ref_sentiment_all(e, y, alpha1=0.2, alpha2=0.2):
    d, b = ref_dstar(e, y), len(y)
    y, pol = y.tolist(), POLARITY.tolist()
    first, second = [], []
    for a in range(b):
        for p in range(b):
            for r in range(b):
                if p != a and y[p] == y[a] and y[r] != y[a] and pol[y[r]] == pol[y[a]]:
                    first.append(torch.relu(d[a][p] - d[a][r] + alpha1))
        for r in range(b):
            for n in range(b):
                if y[r] != y[a] and pol[y[r]] == pol[y[a]] and pol[y[n]] != pol[y[a]]:
                    second.append(torch.relu(d[a][r] - d[a][n] + alpha2))
    return mean_or_zero(first, e) + mean_or_zero(second, e), first + second


def ref_triplet(e, y, margin=0.2):
    b, y = len(y), y.tolist()
    d = [[((e[i] - e[j]) ** 2).sum() for j in range(b)] for i in range(b)]
    terms = [torch.relu(d[a][p] - d[a][n] + margin)
             for a in range(b) for p in range(b) for n in range(b)
             if p != a and y[p] == y[a] and y[n] != y[a]]
    return mean_or_zero(terms, e), terms


def grad(value, e):
    return torch.autograd.grad(value, e)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sentiment_all_matches_loop(seed):
    e, y = batch(seed)
    loss = sentiment_constraint_loss(e, y, POLARITY, WHEEL, sampling="all")
    ref, terms = ref_sentiment_all(e, y)
    active = sum(bool(t > 0) for t in terms)
    assert 0 < active < len(terms)  # both sides of the hinge occur, so the check is not vacuous
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad(loss, e), grad(ref, e), rtol=1e-9, atol=1e-12)


def test_sentiment_all_float32_and_margins():
    e64, y = batch(3)
    e32 = e64.detach().float().requires_grad_()
    loss = sentiment_constraint_loss(e32, y, POLARITY, WHEEL, alpha1=0.1, alpha2=0.3,
                                     sampling="all")
    ref, _ = ref_sentiment_all(e64, y, alpha1=0.1, alpha2=0.3)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(loss, e32).double(), grad(ref, e64), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_matches_loop(seed):
    e, y = batch(seed)
    loss = triplet_loss(e, y, margin=0.3)
    ref, terms = ref_triplet(e, y, margin=0.3)
    assert 0 < sum(bool(t > 0) for t in terms) < len(terms)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad(loss, e), grad(ref, e), rtol=1e-9, atol=1e-12)


def test_wheel_weights_hand_pairs():
    y = torch.tensor([0, 1, 2, 3, 0])
    theta = wheel_weights(y, WHEEL)
    hand = {(0, 4): 1.0, (0, 1): 1 / 2, (0, 2): 1 / 3, (0, 3): 1 / 2, (1, 3): 1 / 3,
            (2, 3): 1 / 2, (3, 4): 1 / 2, (1, 1): 1.0}
    for (i, j), value in hand.items():
        assert theta[i, j].item() == pytest.approx(value)
        assert theta[j, i].item() == pytest.approx(value)


def test_semi_hard_sampler_reproducible_and_valid():
    # No emotion 1 in the batch: anchors of emotion 0 have no related image.
    y = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 2, 0])
    r1, n1 = sample_related_negative(y, POLARITY, torch.Generator().manual_seed(5))
    r2, n2 = sample_related_negative(y, POLARITY, torch.Generator().manual_seed(5))
    r3, n3 = sample_related_negative(y, POLARITY, torch.Generator().manual_seed(6))
    assert torch.equal(r1, r2) and torch.equal(n1, n2)
    assert not (torch.equal(r1, r3) and torch.equal(n1, n3))
    pol = POLARITY[y].tolist()
    for a in range(len(y)):
        for p in range(len(y)):
            r, n = r1[a, p].item(), n1[a, p].item()
            if y[a] == 0:
                assert r == -1
            else:
                assert pol[r] == pol[a] and y[r] != y[a]
            assert pol[n] != pol[a]


def test_semi_hard_sampler_uniform():
    y = torch.arange(12) % 4  # every anchor has 3 related and 6 negative candidates
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(12, 12)
    for _ in range(60):  # 60 x 12 draws per anchor, 240 per related candidate
        r, _ = sample_related_negative(y, POLARITY, g)
        counts += F.one_hot(r, 12).sum(1)
    related = torch.tensor([[int(y[j] != y[a] and POLARITY[y[j]] == POLARITY[y[a]])
                             for j in range(12)] for a in range(12)]).bool()
    assert (counts[~related] == 0).all()
    assert counts[related].min() > 160 and counts[related].max() < 320


def test_semi_hard_loss_matches_loop_on_its_draws():
    e, y = batch(4)
    loss = sentiment_constraint_loss(e, y, POLARITY, WHEEL, sampling="semi-hard",
                                     generator=torch.Generator().manual_seed(9))
    r, n = sample_related_negative(y, POLARITY, torch.Generator().manual_seed(9))
    d, first, second = ref_dstar(e, y), [], []
    for a in range(len(y)):
        for p in range(len(y)):
            if p != a and y[p] == y[a]:
                ra, na = r[a, p].item(), n[a, p].item()
                first.append(torch.relu(d[a][p] - d[a][ra] + 0.2))
                second.append(torch.relu(d[a][ra] - d[a][na] + 0.2))
    ref = mean_or_zero(first, e) + mean_or_zero(second, e)
    assert ref.item() > 0
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad(loss, e), grad(ref, e), rtol=1e-9, atol=1e-12)


def test_semi_hard_skips_missing_related():
    # Only emotions 0 and 2: no related image anywhere, so no constraint exists.
    e, _ = batch(0, b=6)
    y = torch.tensor([0, 0, 0, 2, 2, 2])
    loss = sentiment_constraint_loss(e, y, POLARITY, WHEEL, generator=torch.Generator())
    assert loss.item() == 0
    assert (grad(loss, e) == 0).all()


@pytest.mark.parametrize("sampling", ["all", "semi-hard"])
def test_zero_loss_when_constraints_hold(sampling):
    # 1-D positions per emotion: positives coincide, related D* = 0.5 > alpha1, negatives far.
    y = torch.tensor([0, 1, 2, 3] * 3)
    where = torch.tensor([0.0, 1.0, 10.0, 11.0], dtype=torch.float64)
    e = where[y][:, None].clone().requires_grad_()
    d = ref_dstar(e, y)
    for a in range(12):  # the margins hold by hand for every triplet
        for p in range(12):
            for r in range(12):
                rel = y[r] != y[a] and POLARITY[y[r]] == POLARITY[y[a]]
                if y[p] == y[a] and rel:
                    assert d[a][p] + 0.2 < d[a][r]
                    assert all(d[a][r] + 0.2 < d[a][n] for n in range(12)
                               if POLARITY[y[n]] != POLARITY[y[a]])
    loss = sentiment_constraint_loss(e, y, POLARITY, WHEEL, sampling=sampling,
                                     generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0 and (grad(loss, e) == 0).all()
    assert triplet_loss(e, y).item() == 0
    # Shrunk tenfold the related pairs violate alpha1: the same batch is no longer free.
    shrunk = sentiment_constraint_loss(e * 0.1, y, POLARITY, WHEEL, sampling=sampling,
                                       generator=torch.Generator().manual_seed(0))
    assert shrunk.item() > 0


def test_multitask_weights():
    e, y = batch(5)
    logits = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ce = F.cross_entropy(logits, y)
    soft = SentimentLoss(POLARITY, WHEEL, w=0.0)
    assert torch.equal(soft(logits, e, y), ce)
    sml, _ = ref_sentiment_all(e, y)
    mixed = SentimentLoss(POLARITY, WHEEL, w=0.3, sampling="all")(logits, e, y)
    torch.testing.assert_close(mixed, 0.7 * ce + 0.3 * sml, rtol=1e-10, atol=1e-12)
    trip, _ = ref_triplet(e, y, margin=0.2)
    s_t = SentimentLoss(POLARITY, WHEEL, metric="triplet")(logits, e, y)
    torch.testing.assert_close(s_t, 0.5 * ce + 0.5 * trip, rtol=1e-10, atol=1e-12)


def test_default_mikels_emotions():
    loss = SentimentLoss()
    # amusement, contentment, awe, excitement | fear, sadness, disgust, anger
    assert loss.polarity.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    dis = loss.wheel_distance
    assert torch.equal(dis, dis.T) and (dis.diagonal() == 1).all()
    hand = {(0, 1): 2, (0, 7): 2, (0, 4): 5, (1, 6): 4, (2, 7): 4, (3, 4): 2, (5, 1): 5}
    for (i, j), value in hand.items():
        assert dis[i, j].item() == value
    logits, e = torch.randn(16, 8), F.normalize(torch.randn(16, 32), dim=1)
    y = torch.arange(16) % 8
    assert loss(logits, e, y, generator=torch.Generator().manual_seed(0)).item() > 0


def test_losses_float32_under_autocast():
    e, y = batch(0, dtype=torch.float32)
    logits = torch.randn(12, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = SentimentLoss(POLARITY, WHEEL, sampling="all")(logits, e, y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, SentimentLoss(POLARITY, WHEEL, sampling="all")(logits, e, y))


@pytest.mark.parametrize("call, message", [
    (lambda e, y: sentiment_constraint_loss(e, y, POLARITY, WHEEL, sampling="hard"), "sampling"),
    (lambda e, y: sentiment_constraint_loss(e, y, POLARITY, WHEEL, alpha1=-1), "alpha1"),
    (lambda e, y: sentiment_constraint_loss(e, y, POLARITY, WHEEL[:3]), "wheel_distance"),
    (lambda e, y: sentiment_constraint_loss(e, y, POLARITY, WHEEL - 1), "wheel_distance"),
    (lambda e, y: sentiment_constraint_loss(e, y.float(), POLARITY, WHEEL), "category_ids"),
    (lambda e, y: sentiment_constraint_loss(e, y + 4, POLARITY, WHEEL), "category_ids"),
    (lambda e, y: sentiment_constraint_loss(e[:5], y, POLARITY, WHEEL), "category_ids"),
    (lambda e, y: sentiment_constraint_loss(e[0], y, POLARITY, WHEEL), "embeddings"),
    (lambda e, y: triplet_loss(e, y, margin=-0.1), "margin"),
    (lambda e, y: SentimentLoss(POLARITY, WHEEL, w=1.5), "w"),
    (lambda e, y: SentimentLoss(POLARITY, WHEEL, metric="fc"), "metric"),
    (lambda e, y: SentimentLoss(POLARITY.float(), WHEEL), "polarity"),
    (lambda e, y: SentimentLoss(POLARITY, WHEEL)(torch.randn(12, 5), e, y), "logits"),
])
def test_loss_bad_arguments(call, message):
    e, y = batch(0)
    with pytest.raises(ValueError, match=message):
        call(e, y)


# --- the sentiment-vector head -------------------------------------------------------------

def stages_for(channels, sizes=(8, 5, 3), b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s, s + 1, generator=g) for c, s in zip(channels, sizes)]


def test_gram_matrix_matches_loop_and_is_symmetric():
    x = torch.rand(2, 4, 3, 5, dtype=torch.float64)
    gram = gram_matrix(x)
    assert gram.shape == (2, 4, 4)
    assert torch.equal(gram, gram.transpose(1, 2))
    for b in range(2):
        for i in range(4):
            for j in range(4):
                by_hand = sum(x[b, i, h, w] * x[b, j, h, w] for h in range(3) for w in range(5))
                assert gram[b, i, j].item() == pytest.approx(by_hand.item() / 15)
    torch.testing.assert_close(gram_matrix(x, normalize=False), gram * 15)


def test_head_sentiment_vector_matches_loop():
    channels, n = [3, 5, 7], 4
    head = SentimentVectorHead(channels, num_classes=4, reduced_channels=n)
    stages = stages_for(channels)
    out = head(stages)
    assert head.embedding_dim == 3 * n * (n + 1) // 2
    assert out["embedding"].shape == (2, head.embedding_dim) and out["logits"].shape == (2, 4)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))
    parts = []
    with torch.no_grad():
        for conv, x in zip(head.reduce, stages):
            f = torch.relu(conv(x))
            m = f.shape[2] * f.shape[3]
            parts += [(f[:, i] * f[:, j]).sum((1, 2)) / m for i in range(n) for j in range(i, n)]
    by_hand = torch.stack(parts, 1)
    by_hand = by_hand / by_hand.norm(dim=1, keepdim=True)
    torch.testing.assert_close(out["embedding"].detach(), by_hand)


def test_head_gradient_reaches_convs():
    channels = [3, 5, 7]
    head = SentimentVectorHead(channels, num_classes=4, reduced_channels=4, classifier_input="sv")
    stages = stages_for(channels, b=12)
    out = head(stages)
    y = torch.arange(12) % 4
    SentimentLoss(POLARITY, WHEEL, sampling="all")(out["logits"], out["embedding"], y).backward()
    for conv in head.reduce:
        assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
        assert conv.weight.grad.abs().sum() > 0


def test_head_classifier_inputs():
    channels = [3, 5]
    stages = stages_for(channels)
    sv_head = SentimentVectorHead(channels, num_classes=4, reduced_channels=3,
                                  classifier_input="sv")
    out = sv_head(stages)
    assert sv_head.classifier.in_features == sv_head.embedding_dim == 12
    torch.testing.assert_close(out["logits"], sv_head.classifier(out["embedding"]))
    pooled_head = SentimentVectorHead(channels, num_classes=4, reduced_channels=3)
    gap = stages[-1].mean((2, 3))  # the pooled last stage, by default
    torch.testing.assert_close(pooled_head(stages)["logits"], pooled_head.classifier(gap))
    wide = SentimentVectorHead(channels, num_classes=4, reduced_channels=3, pooled_channels=11)
    pooled = torch.randn(2, 11)
    torch.testing.assert_close(wide(stages, pooled)["logits"], wide.classifier(pooled))
    with pytest.raises(ValueError, match="pooled"):
        wide(stages)


def test_head_float32_under_autocast():
    channels = [3, 5]
    head = SentimentVectorHead(channels, num_classes=4, reduced_channels=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(stages_for(channels))
    assert out["embedding"].dtype == torch.float32 and out["logits"].dtype == torch.float32
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("name, indices, expected", [
    ("resnet10t", [1, 2, 3], [64, 128, 256]),
    ("resnet10t", [3, 1], [64, 256]),
    ("resnet10t", 2, [256, 512]),
    ("mobilenetv2_100", [1, 2, -1], [24, 32, 320]),
])
def test_timm_stages_fit_the_head(name, indices, expected):
    backbone = timm.create_model(name, num_classes=0).eval()
    channels = stage_channels(backbone, indices)
    with torch.no_grad():
        stages = backbone.forward_intermediates(torch.randn(2, 3, 64, 64), indices=indices,
                                                intermediates_only=True)
    assert [s.shape[1] for s in stages] == channels == expected
    head = SentimentVectorHead(channels, reduced_channels=8)
    out = head(stages)
    assert out["embedding"].shape == (2, len(expected) * 36) and out["logits"].shape == (2, 8)


@pytest.mark.parametrize("make, message", [
    (lambda: SentimentVectorHead([]), "in_channels"),
    (lambda: SentimentVectorHead([3, 0]), "in_channels"),
    (lambda: SentimentVectorHead([3], reduced_channels=0), "reduced_channels"),
    (lambda: SentimentVectorHead([3], pooled_channels=0), "pooled_channels"),
    (lambda: SentimentVectorHead([3], classifier_input="fc"), "classifier_input"),
    (lambda: SentimentVectorHead([3, 5])(stages_for([3])), "stages"),
    (lambda: SentimentVectorHead([3, 5])(stages_for([3, 4])), r"stages\[1\]"),
    (lambda: gram_matrix(torch.randn(2, 3, 4)), "features"),
    (lambda: stage_channels(timm.create_model("resnet10t", num_classes=0), [7]), "indices"),
    (lambda: stage_channels(torch.nn.Linear(2, 2), [0]), "feature_info"),
])
def test_head_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
