"""Losses on logits: multi-label BCE, focal, ASL, P0's unsymmetrical loss and P3's partial-BCE,
and torch's cross-entropy for single-label targets.

Each family is a plain ``nn.Module`` called ``loss(logits, targets)`` on N x C tensors
plus the functional form it calls; :func:`create_loss` builds one by name.

Targets are 1 positive, 0 negative and -1 unknown (a missing label of P3's partial-label
protocol, or VOC's difficult-only class); fully labelled 0/1 targets are valid as they
are. (P3 writes -1 negative / 0 unknown; annotlib keeps 0 negative.) Every
multi-label loss accepts partial targets: unknown entries add 0, and ``reduction="mean"`` averages over the
known entries, which is exactly the usual mean on fully labelled targets. The exceptions
are deliberate: ``"partial_bce"`` weights each image by the proportion of its known labels
and averages over images, and ``"bce_unknown_negative"`` counts unknown labels as
negatives (P3's baseline).
"""

from __future__ import annotations

from torch import nn

from .asl import AsymmetricLoss, asymmetric_loss
from .bce import BCELoss, KnownLabelsBCELoss, UnknownAsNegativeBCELoss, bce_loss
from .disagreement import JointCaptionLoss
from .focal import FocalLoss, focal_loss
from .partial_bce import PartialBCELoss, partial_bce_loss
from .sentiment import SentimentLoss
from .unsymmetric import UnsymmetricLoss, unsymmetric_loss

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "asl": AsymmetricLoss,
    "unsymmetric": UnsymmetricLoss,
    "partial_bce": PartialBCELoss,
    "bce_known": KnownLabelsBCELoss,
    "bce_unknown_negative": UnknownAsNegativeBCELoss,
    # single-label targets (class ids), for tasks with one category per image or per step
    "cross_entropy": nn.CrossEntropyLoss,
    # P2: softmax with sentiment constraints or a triplet loss on an embedding
    "sentiment": SentimentLoss,
    # P4: classification + captioning + the CAM disagreement, on terms the task computes
    "joint_caption": JointCaptionLoss,
}


def create_loss(name: str, **kwargs) -> nn.Module:
    """The loss called ``name`` (a key of :data:`LOSSES`), built with ``kwargs``."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None
    return cls(**kwargs)


__all__ = [
    "LOSSES",
    "AsymmetricLoss",
    "BCELoss",
    "FocalLoss",
    "JointCaptionLoss",
    "KnownLabelsBCELoss",
    "PartialBCELoss",
    "SentimentLoss",
    "UnknownAsNegativeBCELoss",
    "UnsymmetricLoss",
    "asymmetric_loss",
    "bce_loss",
    "create_loss",
    "focal_loss",
    "partial_bce_loss",
    "unsymmetric_loss",
]
