"""The multi-label head: global average pooling, Dropout + Linear (P0, P3)."""

from __future__ import annotations

import torch
from torch import nn

from .base import ImageModel


class Annotator(ImageModel):
    """``forward(x)`` logits ``B x C``. GAP + linear makes ``cam(x)`` exact: the logit of
    class c is the spatial mean of its map."""

    def __init__(self, backbone: str, num_classes: int, *, dropout: float = 0.3, **kwargs):
        super().__init__(backbone, **kwargs)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))

    @property
    def classifier(self) -> nn.Linear:
        return self.head[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(pooled)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``B x C x h x w`` (bias spread over the grid)."""
        fmap = self.features(x)
        lin = self.classifier
        return torch.einsum("bfhw,cf->bchw", fmap, lin.weight) + lin.bias[None, :, None, None]
