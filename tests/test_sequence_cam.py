"""Grad-CAM of each decoded label at its step, against the grad-cam library (pytorch_grad_cam)
run step by step on a module whose output is that step's teacher-forced logits."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from annotlib.models.cnn_rnn import CNNRNN, PAD
from annotlib.viz import decoded_step_cams

NUM_CLASSES = 5
END = NUM_CLASSES
SIZE = 96  # resnet10t's last map is 3 x 3 here


class StepLogits(nn.Module):
    """The image's step-``t`` logits along a fixed teacher-forced path."""

    def __init__(self, model: CNNRNN, sequence: torch.Tensor, step: int):
        super().__init__()
        self.model, self.sequence, self.step = model, sequence, step

    def forward(self, x):
        return self.model(x, self.sequence)[:, self.step]


@pytest.fixture
def model() -> CNNRNN:
    torch.manual_seed(2)
    return CNNRNN("resnet10t", NUM_CLASSES, embed_dim=8, hidden_dim=16)


def test_each_step_is_the_libraries_grad_cam_of_the_emitted_label(model):
    torch.manual_seed(1)
    images = torch.randn(4, 3, SIZE, SIZE)
    sequences = torch.tensor([[3, 1, 4], [0, PAD, PAD], [2, END, PAD], [PAD, PAD, PAD]])
    model.train()
    model.head.eval()  # a submodule in another mode than its parent must stay so
    heats, mask = decoded_step_cams(model, images, sequences)

    assert heats.shape == (4, 3, SIZE, SIZE) and heats.dtype == torch.float32
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, False, False],
                             [False, False, False]]
    assert torch.equal(heats[~mask], torch.zeros(int((~mask).sum()), SIZE, SIZE))
    assert model.training and model.backbone.training and not model.head.training
    assert all(p.grad is None for p in model.parameters())

    # The library normalises the low-resolution map, resizes it (cv2's bilinear, the same
    # half-pixel sampling as ours) and normalises again: min-max after an increasing affine
    # map is min-max of the original, so its maps are ours up to rounding.
    layer = model.backbone.layer4[-1]
    shown = 0
    for b, t in mask.nonzero().tolist():
        step_model = StepLogits(model, sequences[b:b + 1], t)
        with GradCAM(step_model, target_layers=[layer]) as cam:
            expected = cam(images[b:b + 1], [ClassifierOutputTarget(int(sequences[b, t]))])[0]
        np.testing.assert_allclose(heats[b, t].numpy(), expected, atol=1e-4)
        shown += bool(expected.max() > 0.5)
    # With random weights a map can be negative everywhere, blank after the ReLU; most are not.
    assert shown >= 3
    # Steps see their own decoded prefix: the maps of one image differ from step to step.
    assert not torch.allclose(heats[0, 0], heats[0, 1], atol=1e-3)


def test_steps_after_the_first_end_or_pad_are_ignored(model):
    images = torch.randn(2, 3, 64, 64)
    # Image 0: a label after PAD would be read with a history that is not the decoded one.
    sequences = torch.tensor([[1, PAD, 3, PAD], [4, 2, 0, END]])
    heats, mask = decoded_step_cams(model.eval(), images, sequences)
    assert heats.shape == (2, 4, 64, 64)
    assert mask.tolist() == [[True, False, False, False], [True, True, True, False]]
    assert heats[0, 1:].abs().sum() == 0 and heats[1, 3].abs().sum() == 0
    assert all(p.grad is None for p in model.parameters())
    # Under no_grad (as in a notebook's prediction code) the maps are the same.
    with torch.no_grad():
        again, _ = decoded_step_cams(model, images, sequences)
    torch.testing.assert_close(again, heats)


def test_decoded_step_cams_check_their_input(model):
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"sequences must be integer \[B=2, T\]"):
        decoded_step_cams(model, images, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sequences must be integer"):
        decoded_step_cams(model, images, torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"sequences must lie in \[-1 \(PAD\), 5 \(END\)\]"):
        decoded_step_cams(model, images, torch.tensor([[6, PAD], [0, PAD]]))
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\]"):
        decoded_step_cams(model, images[0], torch.zeros(2, 2, dtype=torch.long))
