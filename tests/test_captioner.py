"""P4: the attention captioner, the CAM-based disagreement loss and the localisation metrics,
each against an independent reference (numpy formulas, exhaustive search, pytorch-grad-cam)."""

from itertools import product

import numpy as np
import pytest
import torch
from torch import nn

from annotlib.losses.disagreement import (
    JointCaptionLoss,
    class_activation_map,
    disagreement_loss,
    mean_class_map,
    step_attention,
)
from annotlib.metrics.localisation import energy_in_box, pointing_game
from annotlib.models.captioner import PAD, AttentionCaptioner

START, END = 1, 2
VOCAB = 5  # pad, start, end and two words
DIVERGENCE_OPTIONS = [("kl", "attention||cam"), ("kl", "cam||attention"),
                      ("symmetric_kl", "attention||cam"), ("js", "attention||cam")]


# ---------------------------------------------------------------- numpy references

def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rows of ``sum p log(p / q)`` with 0 log 0 = 0 (q > 0 wherever p > 0)."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * np.log(safe_p / np.where(p > 0, q, 1.0)), 0.0).sum(-1)


def np_divergence(p: np.ndarray, q: np.ndarray, divergence: str, direction: str) -> float:
    if divergence == "kl":
        rows = np_kl(p, q) if direction == "attention||cam" else np_kl(q, p)
    elif divergence == "symmetric_kl":
        rows = (np_kl(p, q) + np_kl(q, p)) / 2
    else:
        m = (p + q) / 2
        rows = (np_kl(p, m) + np_kl(q, m)) / 2
    return float(rows.mean())


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- disagreement loss

def test_disagreement_is_zero_when_the_maps_agree():
    cam = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    softmax_attention = cam.flatten(1).softmax(1)
    relu_attention = cam.clamp_min(0).flatten(1)
    relu_attention = relu_attention / relu_attention.sum(1, keepdim=True)
    for divergence, direction in DIVERGENCE_OPTIONS:
        for normalisation, attention in (("softmax", softmax_attention),
                                         ("relu", relu_attention)):
            loss = disagreement_loss(attention, cam, divergence, direction, normalisation)
            assert abs(loss.item()) < 1e-6, (divergence, direction, normalisation)
        # B x H x W attention is the same as its flattened form.
        loss = disagreement_loss(softmax_attention.view(3, 4, 5), cam, divergence, direction)
        assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("divergence,direction", DIVERGENCE_OPTIONS)
def test_disagreement_matches_its_formula_by_hand(divergence, direction):
    rng = np.random.default_rng(1)
    attention = rng.random((4, 12)) + 0.05
    attention /= attention.sum(1, keepdims=True)
    cam = rng.normal(size=(4, 3, 4)) * 2
    expected = np_divergence(attention, np_softmax(cam.reshape(4, 12)), divergence, direction)
    loss = disagreement_loss(torch.tensor(attention, dtype=torch.float32),
                             torch.tensor(cam, dtype=torch.float32), divergence, direction)
    assert loss.dtype == torch.float32
    assert expected > 0.01  # the maps disagree, and the loss says so
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_relu_normalisation_and_unnormalised_attention_by_hand():
    rng = np.random.default_rng(2)
    summed = rng.random((3, 6)) * 4  # attention summed over steps: divided by its sum
    cam = rng.normal(size=(3, 2, 3))
    cam[:, 0, 0] = -1.0  # a cell of zero CAM mass: JS and KL(cam || attention) are exact there
    relu = np.maximum(cam.reshape(3, 6), 0)
    relu /= relu.sum(1, keepdims=True)
    p = summed / summed.sum(1, keepdims=True)
    for divergence, direction in (("js", "attention||cam"), ("kl", "cam||attention")):
        expected = np_divergence(p, relu, divergence, direction)
        loss = disagreement_loss(torch.tensor(summed), torch.tensor(cam), divergence, direction,
                                 cam_normalisation="relu")
        assert loss.item() == pytest.approx(expected, rel=1e-9)
    # KL(attention || cam) at a cam zero: p log(p / eps), the documented clamp.
    eps = 1e-8
    q = np.maximum(relu, eps)
    expected = float((p * (np.log(p) - np.log(q))).sum(1).mean())
    loss = disagreement_loss(torch.tensor(summed), torch.tensor(cam), cam_normalisation="relu",
                             eps=eps)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("divergence,direction", DIVERGENCE_OPTIONS)
@pytest.mark.parametrize("normalisation", ["softmax", "relu"])
def test_moving_attention_toward_the_cam_lowers_the_loss(divergence, direction, normalisation):
    generator = torch.Generator().manual_seed(3)
    cam = torch.randn(2, 3, 3, generator=generator) + 0.5
    attention = torch.rand(2, 9, generator=generator) + 0.1
    attention = (attention / attention.sum(1, keepdim=True)).requires_grad_()
    if normalisation == "softmax":
        target = cam.flatten(1).softmax(1)
    else:
        target = cam.clamp_min(0).flatten(1)
        target = target / target.sum(1, keepdim=True)
    options = {"divergence": divergence, "direction": direction,
               "cam_normalisation": normalisation}
    loss = disagreement_loss(attention, cam, **options)
    (grad,) = torch.autograd.grad(loss, attention)
    toward = target - attention.detach()
    assert (grad * toward).sum() < 0  # the directional derivative toward the CAM
    moved = attention.detach() + 0.3 * toward
    assert disagreement_loss(moved, cam, **options) < loss


def test_images_without_attention_or_positive_cam_are_left_out():
    generator = torch.Generator().manual_seed(4)
    cam = torch.randn(3, 2, 2, generator=generator)
    attention = torch.rand(3, 4, generator=generator)
    attention[1] = 0.0  # no selected step
    attention.requires_grad_()
    loss = disagreement_loss(attention, cam)
    alone = disagreement_loss(attention[[0, 2]], cam[[0, 2]])
    assert loss.item() == pytest.approx(alone.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(attention.grad).all() and (attention.grad[1] == 0).all()
    cam[2] = -1.0  # no positive evidence: left out under "relu"
    relu_loss = disagreement_loss(attention.detach(), cam, cam_normalisation="relu")
    assert relu_loss.item() == pytest.approx(
        disagreement_loss(attention.detach()[:1], cam[:1], cam_normalisation="relu").item())
    assert disagreement_loss(torch.zeros(2, 4), cam[:2]).item() == 0.0


def test_disagreement_rejects_bad_arguments():
    attention, cam = torch.full((1, 4), 0.25), torch.zeros(1, 2, 2)
    for kwargs, name in (({"divergence": "l2"}, "divergence"), ({"direction": "a||b"}, "direction"),
                         ({"cam_normalisation": "minmax"}, "cam_normalisation"),
                         ({"eps": 0.0}, "eps")):
        with pytest.raises(ValueError, match=name):
            disagreement_loss(attention, cam, **kwargs)
    with pytest.raises(ValueError, match="attention"):
        disagreement_loss(torch.full((1, 5), 0.2), cam)
    with pytest.raises(ValueError, match="lambda_dis"):
        JointCaptionLoss(lambda_dis=-1.0)
    with pytest.raises(ValueError, match="divergence"):
        JointCaptionLoss(divergence="l2")


def test_joint_loss_is_the_weighted_sum():
    generator = torch.Generator().manual_seed(5)
    cam = torch.randn(2, 3, 3, generator=generator)
    attention = torch.rand(2, 9, generator=generator)
    cls_loss, caption_loss = torch.tensor(0.7), torch.tensor(2.5)
    p = (attention / attention.sum(1, keepdim=True)).double().numpy()
    dis = np_divergence(p, np_softmax(cam.flatten(1).double().numpy()), "js", "attention||cam")
    total = JointCaptionLoss(divergence="js")(cls_loss, caption_loss, attention, cam)
    assert total.item() == pytest.approx(0.7 + 1.0 * 2.5 + 0.1 * dis, rel=1e-5)
    total = JointCaptionLoss(0.5, 2.0, divergence="js")(cls_loss, caption_loss, attention, cam)
    assert total.item() == pytest.approx(0.7 + 0.5 * 2.5 + 2.0 * dis, rel=1e-5)


def test_step_attention_by_hand():
    attention = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]],
                              [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.1, 0.1, 0.8]]])
    torch.testing.assert_close(step_attention(attention),
                               torch.tensor([[1.2, 1.2, 0.6], [0.6, 0.6, 1.8]]) / 3)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled = step_attention(attention, mask)
    torch.testing.assert_close(pooled, torch.tensor([[0.6, 0.1, 0.3], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="step_mask"):
        step_attention(attention, mask.float())


# ---------------------------------------------------------------- class activation maps

class GapLinear(nn.Module):
    """A classifier over a given feature map: global average pooling, then linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.features = nn.Identity()  # grad-cam's target layer: its activation is the map F
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def relu_min_max(cam: np.ndarray) -> np.ndarray:
    """grad-cam's display scaling: ReLU, then min-max per map."""
    cam = np.maximum(cam, 0)
    cam = cam - cam.min(axis=(1, 2), keepdims=True)
    return cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))


def test_cam_by_hand_and_its_mean_is_the_logit():
    torch.manual_seed(6)
    model = GapLinear(4, 3)
    features = torch.randn(2, 4, 3, 5)
    classes = torch.tensor([2, 0])
    cam = class_activation_map(features, model.fc.weight, classes)
    f, w = features.numpy(), model.fc.weight.detach().numpy()
    expected = np.zeros((2, 3, 5))
    for b, c in enumerate(classes.tolist()):
        for k in range(4):
            expected[b] += w[c, k] * f[b, k]
    np.testing.assert_allclose(cam.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    with_bias = class_activation_map(features, model.fc.weight, classes, model.fc.bias)
    logits = model(features)
    torch.testing.assert_close(with_bias.mean(dim=(1, 2)), logits[[0, 1], classes])


def test_cam_equals_pytorch_grad_cam_on_a_gap_linear_model():
    from pytorch_grad_cam import GradCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(7)
    model = GapLinear(6, 4).eval()
    # Positive activations (post-ReLU, as a CNN's last map is): XGradCAM's weights assume them.
    features = torch.rand(3, 6, 5, 5)
    # grad-cam hooks the gradient of the target layer's output, which needs a graph to it.
    graph_input = features.clone().requires_grad_()
    classes = torch.tensor([0, 3, 1])
    ours = class_activation_map(features, model.fc.weight, classes).detach().numpy()
    for method in (GradCAM, XGradCAM):
        # GAP + linear: both weigh channel k by w_ck / (H W), a positive scale of the CAM.
        with method(model=model, target_layers=[model.features]) as explainer:
            theirs = explainer(input_tensor=graph_input,
                               targets=[ClassifierOutputTarget(c) for c in classes.tolist()])
        np.testing.assert_allclose(relu_min_max(ours), theirs, atol=1e-5)

    multi_hot = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 1]])
    ours = class_activation_map(features, model.fc.weight, multi_hot).detach().numpy()
    per_class = class_activation_map(features.repeat_interleave(4, 0), model.fc.weight,
                                     torch.arange(4).repeat(3)).view(3, 4, 5, 5)
    expected = (per_class * multi_hot[..., None, None]).sum(1) / multi_hot.sum(1)[:, None, None]
    np.testing.assert_allclose(ours, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    # From every class's map, as evaluation gets them: the same mean, and the one-hot case.
    np.testing.assert_allclose(mean_class_map(per_class, multi_hot).detach().numpy(), expected.detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_class_map(per_class, classes), per_class[[0, 1, 2], classes])
    # The mean of the positive logits as grad-cam's target gives the mean of their CAMs.
    targets = [lambda out, row=row: out[row.bool()].mean() for row in multi_hot]
    with GradCAM(model=model, target_layers=[model.features]) as explainer:
        theirs = explainer(input_tensor=graph_input, targets=targets)
    np.testing.assert_allclose(relu_min_max(ours), theirs, atol=1e-5)


def test_cam_rejects_bad_classes():
    features, weight = torch.randn(2, 3, 2, 2), torch.randn(4, 3)
    with pytest.raises(ValueError, match="classes"):
        class_activation_map(features, weight, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="classes"):
        class_activation_map(features, weight, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weight"):
        class_activation_map(features, torch.randn(4, 5), torch.tensor([0, 1]))


# ---------------------------------------------------------------- captioner

def tiny_captioner(seed: int = 0, sharpen: float = 3.0) -> AttentionCaptioner:
    torch.manual_seed(seed)
    model = AttentionCaptioner(6, VOCAB, start_id=START, end_id=END, embed_dim=8, hidden_dim=8,
                               attention_dim=8, dropout=0.0).eval()
    with torch.no_grad():
        model.output.weight.mul_(sharpen)  # spread the log-probabilities so search matters
    return model


def sequence_log_prob(model: AttentionCaptioner, features: torch.Tensor,
                      sequence: list[int]) -> tuple[float, torch.Tensor]:
    """Teacher-forced ``sum_t log p(y_t)`` of ``sequence`` (after <start>) and its attention."""
    tokens = torch.tensor([[START, *sequence]])
    with torch.no_grad():
        logits, attention = model(features[None], tokens)
    log_prob = logits[0].log_softmax(-1).gather(1, tokens[0, 1:, None]).sum()
    return log_prob.item(), attention[0]


def test_teacher_forcing_shapes_and_attention_rows_sum_to_one():
    model = tiny_captioner()
    model.train()  # dropout on: attention rows still sum to 1
    features = torch.randn(3, 6, 2, 3)
    tokens = torch.tensor([[START, 3, 4, END, PAD], [START, 4, END, PAD, PAD],
                           [START, 3, 3, 4, END]])
    logits, attention = model(features, tokens)
    assert logits.shape == (3, 4, VOCAB) and attention.shape == (3, 4, 6)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))
    assert (attention > 0).all()


def test_caption_loss_by_hand():
    rng = np.random.default_rng(8)
    tokens = np.array([[START, 3, 4, END, PAD], [START, 4, END, PAD, PAD]])
    logits = rng.normal(size=(2, 4, VOCAB))
    attention = np_softmax(rng.normal(size=(2, 4, 6)))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = tokens[:, 1:]
    terms, coverage = [], np.zeros((2, 6))
    for b in range(2):
        for t in range(4):
            if targets[b, t] != PAD:
                terms.append(-log_p[b, t, targets[b, t]])
                coverage[b] += attention[b, t]
    regulariser = ((1 - coverage) ** 2).mean()
    for alpha_c in (1.0, 0.3):
        loss = AttentionCaptioner.caption_loss(torch.tensor(logits, dtype=torch.float32),
                                               torch.tensor(tokens),
                                               torch.tensor(attention, dtype=torch.float32),
                                               alpha_c=alpha_c)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(np.mean(terms) + alpha_c * regulariser, rel=1e-5)


def test_beam_search_equals_exhaustive_search():
    model = tiny_captioner(seed=9)
    features = torch.randn(6, 6, 2, 2)
    max_length = 3
    words = [END, 3, 4]  # every token but PAD and <start>
    # Beam 12 keeps every extension (3, then 2 x 3, then 4 x 3): the search is exhaustive.
    result = model.decode(features, beam_size=12, max_length=max_length)
    answers = set()
    for b in range(len(features)):
        finished = [[*prefix, END] for n in range(max_length)
                    for prefix in product([3, 4], repeat=n)]
        scores = [sequence_log_prob(model, features[b], s)[0] for s in finished]
        best = finished[int(np.argmax(scores))]
        answers.add(tuple(best))
        assert result.tokens[b].tolist() == best + [PAD] * (max_length - len(best))
        assert result.log_prob[b].item() == pytest.approx(max(scores), abs=1e-5)
        _, attention = sequence_log_prob(model, features[b], best)
        torch.testing.assert_close(result.attention[b, :len(best)], attention)
        assert (result.attention[b, len(best):] == 0).all()
        assert all(token in words for token in best)
    assert len(answers) > 1  # the images do not all share one caption


def test_batched_decoding_equals_one_image_at_a_time():
    model = tiny_captioner(seed=10)
    features = torch.randn(5, 6, 3, 2)
    for beam_size in (1, 2, 4):
        batch = model.decode(features, beam_size=beam_size, max_length=6)
        for b in range(len(features)):
            alone = model.decode(features[b:b + 1], beam_size=beam_size, max_length=6)
            assert torch.equal(batch.tokens[b], alone.tokens[0])
            torch.testing.assert_close(batch.attention[b], alone.attention[0])
            torch.testing.assert_close(batch.log_prob[b], alone.log_prob[0])


@pytest.mark.parametrize("end_bias", [0.0, -30.0])
def test_beam_one_is_a_greedy_loop(end_bias):
    model = tiny_captioner(seed=11)
    with torch.no_grad():
        model.output.bias[END] += end_bias  # -30: <end> is never picked, the path stays open
    features = torch.randn(4, 6, 2, 3)
    max_length = 5
    result = model.decode(features, beam_size=1, max_length=max_length)
    for b in range(len(features)):
        sequence = []
        while len(sequence) < max_length and (not sequence or sequence[-1] != END):
            # A placeholder last token: the last step's logits predict the next token.
            with torch.no_grad():
                logits, _ = model(features[b:b + 1], torch.tensor([[START, *sequence, PAD]]))
            step = logits[0, -1].clone()
            step[[PAD, START]] = float("-inf")
            sequence.append(int(step.argmax()))
        assert result.tokens[b].tolist() == sequence + [PAD] * (max_length - len(sequence))
        log_prob, attention = sequence_log_prob(model, features[b], sequence)
        assert result.log_prob[b].item() == pytest.approx(log_prob, abs=1e-5)
        torch.testing.assert_close(result.attention[b, :len(sequence)], attention)
        if end_bias:
            assert END not in sequence


def test_captioner_rejects_bad_arguments():
    with pytest.raises(ValueError, match="end_id"):
        AttentionCaptioner(4, VOCAB, start_id=START, end_id=VOCAB)
    with pytest.raises(ValueError, match="differ"):
        AttentionCaptioner(4, VOCAB, start_id=START, end_id=START)
    model = tiny_captioner()
    features = torch.randn(1, 6, 2, 2)
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(1, 5, 2, 2), torch.tensor([[START, END]]))
    with pytest.raises(ValueError, match="start_id"):
        model(features, torch.tensor([[3, END]]))
    with pytest.raises(ValueError, match="beam_size"):
        model.decode(features, beam_size=0)
    with pytest.raises(ValueError, match="alpha_c"):
        model.caption_loss(torch.zeros(1, 1, VOCAB), torch.tensor([[START, END]]),
                           torch.ones(1, 1, 4), alpha_c=-1.0)


# ---------------------------------------------------------------- localisation

def test_pointing_game_on_hand_made_maps():
    grid = torch.zeros(4, 4)
    grid[1, 2] = 1.0  # cell (1, 2) covers pixels x 4..5, y 2..3 of the 8 x 8 image
    maps = grid.expand(5, 4, 4)
    classes = torch.tensor([1, 1, 1, 2, 1])
    boxes = [torch.tensor([[1.0, 4, 2, 6, 4]]),  # around the peak: hit
             torch.tensor([[1.0, 0, 0, 2, 2], [0.0, 4, 2, 6, 4]]),  # peak in another class's box
             torch.tensor([[1.0, 0, 0, 2, 2], [1.0, 3, 1, 5, 3]]),  # the second box holds it
             torch.tensor([[1.0, 4, 2, 6, 4]]),  # no box of class 2: NaN
             torch.tensor([[1.0, 5, 3, 8, 8]])]  # the peak pixel (4.5, 2.5) lies just outside
    hits = pointing_game(maps, classes, boxes, image_size=8)
    assert hits[:3].tolist() == [1.0, 0.0, 1.0] and hits[4] == 0.0 and hits[3].isnan()
    assert torch.nanmean(hits).item() == pytest.approx(0.5)
    assert pointing_game(maps[4:], classes[4:], boxes[4:], 8, tolerance=1.0).item() == 1.0
    # Nearest upsampling: the peak's first pixel in row-major order is (4.5, 2.5) as well.
    assert pointing_game(maps, classes, boxes, 8, mode="nearest")[:3].tolist() == [1.0, 0.0, 1.0]


def test_energy_in_box_on_hand_made_maps():
    grid = torch.tensor([[1.0, 2.0], [3.0, -4.0]])  # 2 x 2 cells of 2 x 2 pixels each
    boxes = torch.tensor([[0.0, 0, 0, 2, 4],  # the left column of cells: 4 pixels x (1 + 3)
                          [0.0, 2, 0, 4, 1]])  # pixel row 0 of cell (0, 1): 2 pixels x 2
    positive_mass = 4 * (1 + 2 + 3)
    energy = energy_in_box(grid[None], torch.tensor([0]), [boxes], 4, mode="nearest")
    assert energy.item() == pytest.approx((16 + 4) / positive_mass)
    energy = energy_in_box(grid[None], torch.tensor([0]), [boxes[:1]], 4, mode="nearest")
    assert energy.item() == pytest.approx(16 / positive_mass)

    # A constant map, upsampled bilinearly: the share of the union's pixels in the image.
    constant = torch.ones(3, 3, 3)
    union = [torch.tensor([[5.0, 0, 0, 4, 4], [5.0, 2, 2, 6, 6]]),  # 16 + 16 - 4 pixels
             torch.tensor([[5.0, 0, 0, 8, 8]]),
             torch.tensor([[4.0, 0, 0, 8, 8]])]  # another class only: NaN
    energy = energy_in_box(constant, torch.tensor([5, 5, 5]), union, 8)
    assert energy[:2].tolist() == pytest.approx([28 / 64, 1.0]) and energy[2].isnan()
    # No positive mass: 0.
    assert energy_in_box(-constant[:1], torch.tensor([5]), union[:1], 8).item() == 0.0


def test_localisation_batches_equal_single_queries():
    generator = torch.Generator().manual_seed(12)
    maps = torch.randn(6, 5, 5, generator=generator)
    classes = torch.randint(0, 2, (6,), generator=generator)
    boxes = []
    for n in (1, 3, 0, 2, 1, 4):
        corners = torch.rand(n, 2, 2, generator=generator) * 32
        low, high = corners.min(1).values, corners.max(1).values
        labels = torch.randint(0, 2, (n, 1), generator=generator).float()
        boxes.append(torch.cat([labels, low, high], dim=1))
    for metric in (pointing_game, energy_in_box):
        batch = metric(maps, classes, boxes, 32)
        alone = torch.cat([metric(maps[i:i + 1], classes[i:i + 1], boxes[i:i + 1], 32)
                           for i in range(6)])
        torch.testing.assert_close(batch, alone, equal_nan=True)


def test_localisation_rejects_bad_arguments():
    maps, classes = torch.zeros(1, 2, 2), torch.tensor([0])
    with pytest.raises(ValueError, match="boxes"):
        pointing_game(maps, classes, [torch.zeros(1, 4)], 8)
    with pytest.raises(ValueError, match="image_size"):
        energy_in_box(maps, classes, [torch.zeros(1, 5)], 0)
    with pytest.raises(ValueError, match="mode"):
        energy_in_box(maps, classes, [torch.zeros(1, 5)], 8, mode="bicubic")
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, classes, [torch.zeros(1, 5)], 8, tolerance=-1.0)
