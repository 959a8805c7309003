"""Multi-label losses on logits: BCE, focal, ASL and P0's unsymmetrical loss.

Each family is a plain ``nn.Module`` called ``loss(logits, targets)`` on N x C tensors
plus the functional form it calls; :func:`create_loss` builds one by name.
"""

from __future__ import annotations

from torch import nn

from .asl import AsymmetricLoss, asymmetric_loss
from .bce import BCELoss, bce_loss
from .focal import FocalLoss, focal_loss
from .unsymmetric import UnsymmetricLoss, unsymmetric_loss

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "asl": AsymmetricLoss,
    "unsymmetric": UnsymmetricLoss,
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
    "UnsymmetricLoss",
    "asymmetric_loss",
    "bce_loss",
    "create_loss",
    "focal_loss",
    "unsymmetric_loss",
]
