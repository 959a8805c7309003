"""Losses against their papers' formulas, written out here in float64 scalar math."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from annotlib.losses import (
    LOSSES,
    AsymmetricLoss,
    BCELoss,
    FocalLoss,
    JointCaptionLoss,
    KnownLabelsBCELoss,
    PartialBCELoss,
    SentimentLoss,
    UnknownAsNegativeBCELoss,
    UnsymmetricLoss,
    asymmetric_loss,
    bce_loss,
    create_loss,
    focal_loss,
    partial_bce_loss,
    unsymmetric_loss,
)

NAMES = ["bce", "focal", "asl", "unsymmetric"]


# ---- scalar references: the formulas as printed, nothing shared with the library ----

def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_bce(x, y):
    p = sig(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def ref_focal(x, y, gamma_pos=3.0, gamma_neg=3.0):
    p = sig(x)
    return -y * (1 - p) ** gamma_pos * math.log(p) - (1 - y) * p**gamma_neg * math.log(1 - p)


def ref_asl(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05):
    p = sig(x)
    p_m = max(p - clip, 0.0)
    return -y * (1 - p) ** gamma_pos * math.log(p) - (1 - y) * p_m**gamma_neg * math.log(1 - p_m)


def ref_unsymmetric(x, y, gamma_neg=4.0, margin_neg=0.05, gamma_pos=3.0, margin_pos=1.1, tau=0.25):
    p_m = max(sig(x) - margin_neg, 0.0)
    negative = -(1 - y) * p_m**gamma_neg * math.log(1 - p_m)
    q = sig(x - margin_pos)
    weight = 1.0 if q >= tau else (1 - q) ** gamma_pos
    return -y * weight * math.log(q) + negative


REFERENCES = {"bce": ref_bce, "focal": ref_focal, "asl": ref_asl, "unsymmetric": ref_unsymmetric}

# logit(0.05) = -2.944: -4 and -3 put p below ASL's clip, -2.5 just above it.
# m_pos + logit(tau) = 0.0014: -1 and 0 put q below tau (focal), 0.01 and 1.5 above (BCE).
POINTS = [-4.0, -3.0, -2.5, -1.0, 0.0, 0.01, 0.5, 1.5, 3.0]
KINKS = [math.log(0.05 / 0.95), 1.1 + math.log(0.25 / 0.75)]


def grid(dtype=torch.float64):
    """Every point with target 1 (row 0) and target 0 (row 1)."""
    x = torch.tensor([POINTS, POINTS], dtype=dtype)
    y = torch.tensor([[1.0] * len(POINTS), [0.0] * len(POINTS)])
    return x, y


def away_from_kinks(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 8 - 4
    for kink in KINKS:
        x = torch.where((x - kink).abs() < 0.1, x + 0.3, x)
    y = (torch.rand(shape, generator=gen) < 0.4).double()
    return x, y


def elementwise(name, x, y, **kw):
    return create_loss(name, reduction="none", **kw)(x, y)


# ---- values at hand-computed points ----

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_matches_paper_formula_at_points(name, dtype, tol):
    x, y = grid(dtype)
    got = elementwise(name, x, y)
    want = torch.tensor([[REFERENCES[name](float(a), float(b)) for a, b in zip(r, s)]
                         for r, s in zip(x.double(), y)], dtype=torch.float64)
    assert got.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_points_exercise_both_branches():
    """The grid really sits on both sides of each switch (else the test above proves less)."""
    assert ref_asl(-3.0, 0) == 0.0 and ref_asl(-2.5, 0) > 0.0
    assert ref_unsymmetric(0.0, 1) < ref_unsymmetric(0.0, 1, gamma_pos=0.0)  # focal: q < tau
    assert ref_unsymmetric(0.01, 1) == ref_unsymmetric(0.01, 1, gamma_pos=0.0)  # BCE: q >= tau


def test_unsymmetric_positive_by_hand():
    # x = 1.5: q = sigmoid(0.4) >= tau, plain -log q.
    assert unsymmetric_loss(torch.tensor([[1.5]]), torch.tensor([[1.0]])).item() == pytest.approx(
        math.log(1 + math.exp(-0.4)), rel=1e-6)
    # x = -1: q = sigmoid(-2.1) < tau, weighted by (1 - q)^3.
    q = 1 / (1 + math.exp(2.1))
    assert unsymmetric_loss(torch.tensor([[-1.0]]), torch.tensor([[1.0]])).item() == pytest.approx(
        -((1 - q) ** 3) * math.log(q), rel=1e-6)


def test_bce_equals_torch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=gen) * 5
    y = (torch.rand(8, 5, generator=gen) < 0.3).float()
    torch.testing.assert_close(bce_loss(x, y, "none"),
                               F.binary_cross_entropy_with_logits(x, y, reduction="none"))
    torch.testing.assert_close(BCELoss()(x, y), F.binary_cross_entropy_with_logits(x, y))
    torch.testing.assert_close(BCELoss()(x, y), nn.MultiLabelSoftMarginLoss()(x, y))


# ---- limits ----

ZERO = {
    "focal": {"gamma_pos": 0.0, "gamma_neg": 0.0},
    "asl": {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0},
    "unsymmetric": {"gamma_pos": 0.0, "gamma_neg": 0.0, "margin_pos": 0.0, "margin_neg": 0.0},
}


@pytest.mark.parametrize("name", ZERO)
def test_zero_gammas_and_margins_give_bce(name):
    x = torch.cat([torch.randn(6, 7) * 4, torch.tensor([[-100.0, -30, -1e-3, 0, 1e-3, 30, 100]])])
    y = (torch.rand_like(x) < 0.5).float()
    torch.testing.assert_close(elementwise(name, x, y, **ZERO[name]), elementwise("bce", x, y),
                               rtol=0, atol=1e-6)


def test_asl_without_clip_is_exactly_logsigmoid():
    x = torch.linspace(-20, 20, 41).reshape(1, -1)
    neg = asymmetric_loss(x, torch.zeros_like(x), gamma_neg=0.0, clip=0.0, reduction="none")
    assert torch.equal(neg, -F.logsigmoid(-x))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_logits_are_finite_with_right_limits(name, dtype):
    big = torch.tensor([-1e4, -100.0, 100.0, 1e4], dtype=dtype)
    x = torch.stack([big, big]).requires_grad_()
    y = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])  # integer targets on purpose
    loss = elementwise(name, x, y)
    loss.sum().backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()

    mag = big.float().abs()  # bf16 rounds 1e4 to 9984
    margin_pos = 1.1 if name == "unsymmetric" else 0.0
    clipped = name in ("asl", "unsymmetric")
    # Wrong positives (x << 0): -log q with q = sigmoid(x - m_pos) -> |x| + m_pos, weight -> 1.
    torch.testing.assert_close(loss[0, :2], mag[:2] + margin_pos)
    # Right answers cost nothing: confident positives, and negatives (below ASL's clip).
    assert loss[0, 2:].max() < 1e-40 and loss[1, :2].max() < 1e-40
    # Wrong negatives: |x| for BCE/focal; bounded by (1 - m)^4 log(1/m) under the clip.
    wrong_negative = (0.95**4 * math.log(20) * torch.ones(2)) if clipped else mag[2:]
    torch.testing.assert_close(loss[1, 2:], wrong_negative)
    # Gradients at the limits: -1 for every wrong positive; 0 for saturated clipped negatives.
    torch.testing.assert_close(x.grad[0, :2].float(), -torch.ones(2))
    torch.testing.assert_close(x.grad[1, 2:].float(), torch.zeros(2) if clipped else torch.ones(2))


@pytest.mark.parametrize("name", NAMES)
def test_fractional_gammas_keep_gradients_finite(name):
    """(1 - p)^0.5 and p_m^0.5 have infinite slope at 0: saturated logits and negatives
    below the clip must not turn that into nan."""
    kw = {"bce": {}, "focal": {"gamma_pos": 0.5, "gamma_neg": 0.5},
          "asl": {"gamma_pos": 0.5, "gamma_neg": 0.5, "detach_focal_weight": False},
          "unsymmetric": {"gamma_pos": 0.5, "gamma_neg": 0.5}}[name]
    row = torch.tensor([-1e4, -100.0, -5.0, -3.0, 5.0, 100.0, 1e4])
    x = torch.stack([row, row]).requires_grad_()
    loss = elementwise(name, x, torch.tensor([[1.0] * 7, [0.0] * 7]), **kw)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()


# ---- gradients ----

@pytest.mark.parametrize("name, kw", [("bce", {}), ("focal", {}), ("asl", {"detach_focal_weight": False}),
                                      ("unsymmetric", {})])
def test_gradcheck_away_from_kinks(name, kw):
    x, y = away_from_kinks((4, 6))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: elementwise(name, t, y, **kw), (x,))


@pytest.mark.parametrize("name, kw", [("bce", {}), ("focal", {}), ("asl", {"detach_focal_weight": False}),
                                      ("unsymmetric", {})])
def test_gradient_matches_finite_difference_of_reference(name, kw):
    x, y = grid()
    x.requires_grad_()
    elementwise(name, x, y, **kw).sum().backward()
    h = 1e-6
    ref = REFERENCES[name]
    want = torch.tensor([[(ref(a + h, b) - ref(a - h, b)) / (2 * h) for a, b in zip(r, s)]
                         for r, s in zip(x.detach().tolist(), y.tolist())], dtype=torch.float64)
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-7)


def test_asl_detached_focal_weight_gradient():
    x, y = grid()
    grads = {}
    for detach in (True, False):
        t = x.clone().requires_grad_()
        AsymmetricLoss(detach_focal_weight=detach, reduction="sum")(t, y).backward()
        grads[detach] = t.grad
    assert not torch.allclose(grads[True], grads[False])
    # Weights held constant: d/dx -log p = p - 1 (gamma_pos 0) for positives;
    # d/dx -w log(1 - p_m) = w p (1 - p) / (1 - p_m), w = p_m^4, for negatives.
    want = []
    for a in POINTS:
        p = sig(a)
        p_m = max(p - 0.05, 0.0)
        want.append(p_m**4 * p * (1 - p) / (1 - p_m))
    torch.testing.assert_close(grads[True][0], torch.tensor([sig(a) - 1 for a in POINTS],
                                                            dtype=torch.float64))
    torch.testing.assert_close(grads[True][1], torch.tensor(want, dtype=torch.float64))


def test_unsymmetric_focal_weight_gets_gradient():
    x = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)  # q < tau: focal branch
    UnsymmetricLoss()(x, torch.ones_like(x)).backward()
    q = sig(-2.1)
    with_weight = (ref_unsymmetric(-1.0 + 1e-6, 1) - ref_unsymmetric(-1.0 - 1e-6, 1)) / 2e-6
    weight_constant = (1 - q) ** 3 * (q - 1)
    assert x.grad.item() == pytest.approx(with_weight, rel=1e-6)
    assert abs(x.grad.item() - weight_constant) > 1e-2


# ---- reductions, factory, argument checks ----

@pytest.mark.parametrize("name", NAMES)
def test_reductions(name):
    x, y = away_from_kinks((5, 3), seed=2)
    none = elementwise(name, x, y)
    assert none.shape == (5, 3)
    torch.testing.assert_close(create_loss(name, reduction="sum")(x, y), none.sum())
    torch.testing.assert_close(create_loss(name)(x, y), none.mean())
    with pytest.raises(ValueError, match="reduction"):
        create_loss(name, reduction="average")


@pytest.mark.parametrize("fn", [bce_loss, focal_loss, asymmetric_loss, unsymmetric_loss,
                                partial_bce_loss])
def test_functional_checks_arguments(fn):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="reduction"):
        fn(x, x, reduction="batchmean")
    with pytest.raises(ValueError, match="differ"):
        fn(x, torch.zeros(3))


def test_create_loss_by_name_and_kwargs():
    assert LOSSES == {"bce": BCELoss, "focal": FocalLoss, "asl": AsymmetricLoss,
                      "unsymmetric": UnsymmetricLoss, "partial_bce": PartialBCELoss,
                      "bce_known": KnownLabelsBCELoss,
                      "bce_unknown_negative": UnknownAsNegativeBCELoss,
                      "cross_entropy": torch.nn.CrossEntropyLoss, "sentiment": SentimentLoss,
                      "joint_caption": JointCaptionLoss}
    for name, cls in LOSSES.items():
        assert type(create_loss(name)) is cls
    focal = create_loss("focal", gamma_pos=2.0, gamma_neg=1.0)
    assert (focal.gamma_pos, focal.gamma_neg) == (2.0, 1.0)
    x, y = grid()
    torch.testing.assert_close(focal(x, y), focal_loss(x, y, gamma_pos=2.0, gamma_neg=1.0))
    unsym = create_loss("unsymmetric", tau=0.5, margin_pos=0.0)
    assert unsym.tau == 0.5 and unsym.margin_pos == 0.0
    with pytest.raises(TypeError):
        create_loss("bce", gamma_pos=1.0)
    with pytest.raises(ValueError, match="bce, focal, asl, unsymmetric"):
        create_loss("softmax")


@pytest.mark.parametrize("cls, fn", [(BCELoss, bce_loss), (FocalLoss, focal_loss),
                                     (AsymmetricLoss, asymmetric_loss),
                                     (UnsymmetricLoss, unsymmetric_loss),
                                     (PartialBCELoss, partial_bce_loss)])
def test_functional_form_has_the_module_defaults(cls, fn):
    module = {k: v.default for k, v in inspect.signature(cls).parameters.items()}
    functional = {k: v.default for k, v in inspect.signature(fn).parameters.items()
                  if k not in ("logits", "targets")}
    assert functional == module


def test_paper_defaults():
    assert (FocalLoss().gamma_pos, FocalLoss().gamma_neg) == (3.0, 3.0)
    asl = AsymmetricLoss()
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip, asl.detach_focal_weight) == (4.0, 0.0, 0.05, True)
    u = UnsymmetricLoss()
    assert (u.gamma_neg, u.margin_neg, u.gamma_pos, u.margin_pos, u.tau) == (4.0, 0.05, 3.0, 1.1, 0.25)
    assert all(create_loss(name).reduction == "mean" for name in NAMES)


# ---- partial targets: 1 positive, 0 negative, -1 unknown ----

def partial_case(shape=(6, 9), seed=3, dtype=torch.float64):
    """Logits away from the kinks; about a third of the targets unknown, one row all unknown."""
    x, y = away_from_kinks(shape, seed)
    gen = torch.Generator().manual_seed(seed + 10)
    partial = torch.where(torch.rand(shape, generator=gen) < 0.35, -1.0, y)
    partial[0] = -1
    return x.to(dtype), y, partial


@pytest.mark.parametrize("name", NAMES)
def test_fully_labelled_targets_give_the_plain_mean_bit_for_bit(name):
    """The known-entry mask must not change a single bit of the loss on 0/1 targets."""
    for dtype in (torch.float32, torch.float64):
        x, y = away_from_kinks((16, 11), seed=4)
        x = x.to(dtype)
        assert torch.equal(create_loss(name)(x, y), elementwise(name, x, y).mean())
        assert torch.equal(create_loss(name, reduction="sum")(x, y), elementwise(name, x, y).sum())


@pytest.mark.parametrize("name", NAMES)
def test_unknown_targets_add_nothing_and_mean_is_over_known_entries(name):
    x, full, partial = partial_case()
    known = partial >= 0
    # Unknown entries are 0; known entries keep the value they have under full labels.
    want = torch.tensor([[REFERENCES[name](float(a), float(b)) if k else 0.0
                          for a, b, k in zip(r, s, m)]
                         for r, s, m in zip(x, full, known)], dtype=torch.float64)
    torch.testing.assert_close(elementwise(name, x, partial), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(create_loss(name, reduction="sum")(x, partial), want.sum())
    torch.testing.assert_close(create_loss(name)(x, partial), want[known].mean())
    torch.testing.assert_close(create_loss(name)(x, partial),
                               create_loss(name)(x[known][None], full[known][None]))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_targets_get_no_gradient(name):
    x, _, partial = partial_case()
    x.requires_grad_()
    create_loss(name)(x, partial).backward()
    assert (x.grad[partial < 0] == 0).all()
    assert (x.grad[partial >= 0] != 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_all_unknown_targets_give_zero_not_nan(name):
    x = torch.randn(3, 4, requires_grad=True)
    for reduction in ("mean", "sum"):
        loss = create_loss(name, reduction=reduction)(x, -torch.ones(3, 4))
        loss.backward()
        assert loss.item() == 0.0 and (x.grad == 0).all()


# P2's and P4's losses take other inputs (an embedding; computed loss terms) and are tested
# in float32 under autocast in their own files.
ON_LOGITS = [name for name in LOSSES if name not in ("sentiment", "joint_caption")]


@pytest.mark.parametrize("name", ON_LOGITS)
def test_bf16_logits_give_finite_fp32_loss_and_gradients(name):
    """Every registered loss: bf16 logits up to +-100 are promoted to float32 inside."""
    gen = torch.Generator().manual_seed(7)
    edges = torch.tensor([-100.0, -30.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 30.0, 100.0])
    x = torch.cat([edges.repeat(3, 1), (torch.rand(5, 9, generator=gen) * 200 - 100)])
    targets = torch.tensor([1.0, 0.0, -1.0]).repeat_interleave(9).view(3, 9)
    targets = torch.cat([targets, torch.randint(-1, 2, (5, 9), generator=gen).float()])
    targets[-1] = -1  # an image without any known label
    for reduction in ("mean", "sum", "none"):
        logits = x.to(torch.bfloat16).requires_grad_()
        loss = create_loss(name, reduction=reduction)(logits, targets)
        loss.sum().backward()
        assert loss.dtype == torch.float32
        assert torch.isfinite(loss).all() and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("name, gamma_keys", [("focal", ("gamma_pos", "gamma_neg")),
                                              ("asl", ("gamma_pos", "gamma_neg")),
                                              ("unsymmetric", ("gamma_pos", "gamma_neg"))])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0])
def test_bf16_training_step_is_finite_for_every_gamma(name, gamma_keys, gamma):
    """bf16 autocast training: the logits arrive in bf16, the loss and gradients stay finite
    for any focusing exponent, from saturated logits to ties at zero."""
    logits = torch.linspace(-100, 100, 41).to(torch.bfloat16).repeat(2, 1).requires_grad_()
    targets = torch.stack([torch.ones(41), torch.zeros(41)])
    loss = create_loss(name, **{key: gamma for key in gamma_keys})(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad.float()).all()


def test_p0_compares_against_its_own_asl_whose_focal_weights_carry_gradients():
    """P0's ASL baseline does not detach the focal weights: its gradient is the derivative of
    the reference formula, which a detached weight would miss."""
    from annotlib.papers.p0 import LOSSES as P0_LOSSES
    x, y = away_from_kinks((4, 6))
    x = x.requires_grad_()
    loss = create_loss("asl", **P0_LOSSES["asl"], reduction="sum")
    (grad,) = torch.autograd.grad(loss(x, y), x)
    eps = 1e-6
    numeric = torch.tensor([[(ref_asl(v + eps, t) - ref_asl(v - eps, t)) / (2 * eps)
                             for v, t in zip(row.tolist(), target.tolist())] for row, target in zip(x, y)])
    torch.testing.assert_close(grad, numeric.to(grad.dtype), rtol=1e-4, atol=1e-6)
    (detached,) = torch.autograd.grad(create_loss("asl", reduction="sum")(x, y), x)
    assert not torch.allclose(detached, numeric.to(grad.dtype), rtol=1e-4, atol=1e-6)
