"""Backbones and per-paper heads, built by name: :func:`create_model`.

A head is an :class:`ImageModel` subclass taking ``(backbone, **sizes, **head_kwargs)``,
``sizes`` being what the data fixes (``num_classes``, a vocabulary size) as the task
reports it. Register a new one in :data:`HEADS`.
"""

from __future__ import annotations

from .annotator import Annotator
from .backbone import WeightsError, create_backbone
from .base import ImageModel
from .cnn_rnn import CNNRNN
from .joint import CamCaptioner
from .sentiment import SentimentModel

HEADS: dict[str, type[ImageModel]] = {
    "multilabel": Annotator,
    "cnn_rnn": CNNRNN,
    "cam_captioner": CamCaptioner,
    "sentiment": SentimentModel,
}


def create_model(head: str, backbone: str, *, weights_file=None, pretrained: bool = False,
                 freeze_backbone: bool = False, **kwargs) -> ImageModel:
    """The model with head ``head`` (a key of :data:`HEADS`) on the timm ``backbone``;
    ``kwargs`` are the head's (sizes and its options)."""
    try:
        cls = HEADS[head]
    except KeyError:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}") from None
    return cls(backbone, weights_file=weights_file, pretrained=pretrained,
               freeze_backbone=freeze_backbone, **kwargs)


__all__ = ["CNNRNN", "HEADS", "Annotator", "CamCaptioner", "ImageModel", "SentimentModel", "WeightsError", "create_backbone", "create_model"]
