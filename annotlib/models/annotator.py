"""Multi-label annotator: timm backbone, global average pooling, Dropout + Linear head."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import create_backbone


class Annotator(nn.Module):
    """``features(x)`` last spatial map (for CAM), ``embed(x)`` pooled vector (for t-SNE/UMAP),
    ``forward(x)`` logits. GAP + linear makes ``cam(x)`` exact: the logit of class c is
    the spatial mean of its map."""

    def __init__(self, backbone: str, num_classes: int, *, dropout: float = 0.3,
                 weights_file=None, pretrained: bool = False, **backbone_kwargs):
        super().__init__()
        self.backbone = create_backbone(backbone, weights_file=weights_file, pretrained=pretrained,
                                        **backbone_kwargs)
        self.num_features = self.backbone.num_features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        cfg = self.backbone.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    @property
    def classifier(self) -> nn.Linear:
        return self.head[1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3), dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pooling and the head stay in fp32 under bf16 autocast: bf16 logits tied half of
        # each label's test scores on Corel-5k, blurring the ranking that mAP and the threshold
        # search read. Their cost is negligible next to the backbone's.
        pooled = self.embed(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(pooled)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``B x C x h x w`` (bias spread over the grid)."""
        fmap = self.features(x)
        lin = self.classifier
        return torch.einsum("bfhw,cf->bchw", fmap, lin.weight) + lin.bias[None, :, None, None]
