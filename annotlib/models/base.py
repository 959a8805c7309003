"""The model every head builds on: a timm backbone, its pooled features, a paper's head."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import create_backbone


class ImageModel(nn.Module):
    """A timm backbone (``self.backbone``) and a head (``self.head``) that a subclass defines.

    ``features(x)`` is the backbone's last feature map (for CAMs), ``embed(x)`` the pooled
    vector of timm's ``forward_head(pre_logits=True)`` (for t-SNE/UMAP), so any timm model
    serves, ViTs included. ``forward`` is the subclass's: training steps call the model
    only through it, so that DistributedDataParallel sees every step.

    With ``freeze_backbone`` the backbone's parameters get no gradient and it stays in eval
    mode (batch-norm statistics fixed too), as when P1 keeps its CNN frozen.
    """

    def __init__(self, backbone: str, *, weights_file=None, pretrained: bool = False,
                 freeze_backbone: bool = False, **backbone_kwargs):
        super().__init__()
        self.backbone = create_backbone(backbone, weights_file=weights_file, pretrained=pretrained,
                                        **backbone_kwargs)
        self.num_features = self.backbone.num_features
        self.freeze_backbone = freeze_backbone
        self.backbone.requires_grad_(not freeze_backbone)
        cfg = self.backbone.pretrained_cfg
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def train(self, mode: bool = True) -> ImageModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        # Pooling and whatever follows stay in fp32 under bf16 autocast: bf16 logits tied half
        # of each label's test scores on Corel-5k, blurring the ranking that mAP and the
        # threshold search read. Their cost is negligible next to the backbone's.
        with torch.autocast(features.device.type, enabled=False):
            return self.backbone.forward_head(features.float(), pre_logits=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))
