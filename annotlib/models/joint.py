"""P4's joint model (Yoon et al., ETRI Journal 2020): one CNN feature map read by a global
average pooling + linear classifier, whose class activation maps (CAMs) are exact, and by a
Show-Attend-and-Tell caption decoder, whose attention lives on the same grid.

Grid cells are row-major (``i = row * W + col``), as in :mod:`annotlib.models.captioner`, so
the attention of step ``t`` reshaped to ``H x W`` lies on the CAM's grid.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses.disagreement import class_activation_map
from .base import ImageModel
from .captioner import AttentionCaptioner


class CamCaptioner(ImageModel):
    """A timm CNN's last feature map ``F`` (``B x D x H x W``) read by two heads:

    - the classifier: ``logits = W mean_{hw} F + b`` (global average pooling, then one
      linear layer, nothing between), so ``CAM_c = sum_k w_ck F_k`` and the logit of class
      ``c`` is the grid mean of ``CAM_c`` plus ``b_c``;
    - with ``captioner=True`` (default), an :class:`AttentionCaptioner` over ``F``
      (``embed_dim``, ``hidden_dim``, ``attention_dim``, ``dropout`` are its options).
      ``captioner=False`` builds the classifier alone (P4's classifier-only baseline, whose
      captioner would get no gradient, which DistributedDataParallel refuses).

    Pooling, both heads and the CAMs run in fp32 under bf16 autocast, as
    :meth:`ImageModel.pool` does. P4's shared multimodal embedding is not modelled: both
    heads read the backbone's map directly. ``num_classes``, ``vocab_size``, ``start_id`` and
    ``end_id`` come from the task.
    """

    def __init__(self, backbone: str, num_classes: int, vocab_size: int, start_id: int, end_id: int,
                 *, captioner: bool = True, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, **kwargs):
        super().__init__(backbone, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if captioner is not True and captioner is not False:
            raise ValueError(f"captioner must be true or false, got {captioner!r}")
        self.num_classes = num_classes
        heads = {"classifier": nn.Linear(self.num_features, num_classes)}
        if captioner:
            heads["captioner"] = AttentionCaptioner(
                self.num_features, vocab_size, start_id=start_id, end_id=end_id, embed_dim=embed_dim,
                hidden_dim=hidden_dim, attention_dim=attention_dim, dropout=dropout)
        self.head = nn.ModuleDict(heads)

    @property
    def classifier(self) -> nn.Linear:
        return self.head["classifier"]

    @property
    def captioner(self) -> AttentionCaptioner | None:
        return self.head["captioner"] if "captioner" in self.head else None  # noqa: SIM401 (a ModuleDict)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``F`` in fp32, ``B x D x H x W``; a backbone whose features are tokens (ViT) has no
        grid for a CAM and is refused."""
        features = self.features(x)
        if features.ndim != 4 or features.shape[1] != self.num_features:
            raise ValueError(f"the cam_captioner head needs a CNN feature map B x {self.num_features} x H x W, "
                             f"got shape {tuple(features.shape)} from the backbone")
        return features.float()

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3)))

    def _class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W``: every class's CAM, without bias."""
        return torch.einsum("bdhw,cd->bchw", features, self.classifier.weight)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W``: every class's map plus its bias, whose grid mean is its logit (the
        interface of :func:`annotlib.viz.class_activation_maps`)."""
        features = self.feature_map(x)
        with torch.autocast(x.device.type, enabled=False):
            return self._class_maps(features) + self.classifier.bias[None, :, None, None]

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None,
                classes: torch.Tensor | None = None, cams: bool = False) -> dict[str, torch.Tensor]:
        """Training (teacher forcing): a dict with

        - ``logits`` ``B x C``, always;
        - ``cam`` ``B x H x W``, given ``classes`` (``B`` ids or a ``B x C`` multi-hot: the mean
          of the positive classes' CAMs, :func:`class_activation_map`, without bias);
        - ``cams`` ``B x C x H x W``, every class's CAM without bias, with ``cams=True``;
        - ``caption_logits`` ``B x (L-1) x V`` and ``attention`` ``B x (L-1) x H x W``, given
          ``tokens`` (``B x L``, <start> first, PAD after <end>).
        """
        features = self.feature_map(images)
        with torch.autocast(images.device.type, enabled=False):
            out = {"logits": self._classify(features)}
            weight = self.classifier.weight
            if classes is not None:
                out["cam"] = class_activation_map(features, weight, classes)
            if cams:
                out["cams"] = self._class_maps(features)
            if tokens is not None:
                if self.captioner is None:
                    raise ValueError("this cam_captioner was built with captioner=False: it cannot "
                                     "take tokens")
                logits, attention = self.captioner(features, tokens)
                out["caption_logits"] = logits
                out["attention"] = attention.view(*attention.shape[:2], *features.shape[2:])
        return out

    @torch.no_grad()
    def decode(self, images: torch.Tensor, beam_size: int = 3, max_length: int = 20,
               cams: bool = False) -> dict[str, torch.Tensor]:
        """Prediction: a dict with ``logits`` ``B x C``, ``predicted`` (``B``, the top class),
        ``cam`` ``B x H x W`` (its CAM, without bias), with ``cams=True`` every class's CAM
        ``cams`` ``B x C x H x W`` (without bias: ``C x H x W`` floats per image, fewer than the
        feature map's ``D x H x W`` where ``C < D``), and, with a captioner, the beam search's
        ``tokens`` ``B x max_length`` (<end> included, PAD after), ``attention``
        ``B x max_length x H x W`` (0 after <end>) and ``caption_log_prob`` ``B``."""
        features = self.feature_map(images)
        with torch.autocast(images.device.type, enabled=False):
            logits = self._classify(features)
            predicted = logits.argmax(dim=1)
            out = {"logits": logits, "predicted": predicted,
                   "cam": class_activation_map(features, self.classifier.weight, predicted)}
            if cams:
                out["cams"] = self._class_maps(features)
            if self.captioner is not None:
                caption = self.captioner.decode(features, beam_size=beam_size, max_length=max_length)
                out["tokens"] = caption.tokens
                out["attention"] = caption.attention.view(*caption.attention.shape[:2], *features.shape[2:])
                out["caption_log_prob"] = caption.log_prob
        return out
