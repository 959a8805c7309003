"""P2's sentiment vector (Yang et al., AAAI 2018): Gram matrices of several backbone stages,
an embedding of image texture for the sentiment constraints, plus a softmax classifier.

The head works on the stage feature maps that timm's
``backbone.forward_intermediates(x, indices=..., intermediates_only=True)`` returns for a CNN
(each ``B x C_l x H_l x W_l``); :func:`stage_channels` gives their channel counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models._features import feature_take_indices
from torch import nn
from torch.nn import functional as F

from .base import ImageModel

CLASSIFIER_INPUTS = ("sv", "pooled")


def stage_channels(backbone: nn.Module, indices: int | Sequence[int]) -> list[int]:
    """Channel counts ``C_l`` of the stages that ``backbone.forward_intermediates(x,
    indices=indices)`` returns, read from timm's ``feature_info``; ``indices`` as timm takes
    them (an int: the last n stages; a list: stage indices, negative from the end). The
    order is the returned maps' order: ascending stage, each stage once."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(f"{type(backbone).__name__} has no feature_info to read stages from")
    channels = info.channels() if hasattr(info, "channels") else [f["num_chs"] for f in info]
    try:
        take, _ = feature_take_indices(len(channels), indices)
    except AssertionError as err:  # timm's range check; a ValueError names the argument
        raise ValueError(f"indices {indices!r} do not fit {len(channels)} stages: {err}") from None
    return [channels[i] for i in sorted(set(take))]


def gram_matrix(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``B x N' x N'``: ``Phi = F^T F`` with ``F`` the ``M x N'`` matrix of a
    ``B x N' x H x W`` feature map (``M = H W`` positions), ``Phi_ij = sum_k F_ki F_kj``,
    divided by ``M`` when ``normalize``.

    Computed in float32 with autocast off: sums of ``M`` products overflow or lose
    precision in half precision. (float64 stays float64, for reference checks.)
    """
    if features.dim() != 4:
        raise ValueError(f"features must be B x C x H x W, got shape {tuple(features.shape)}")
    with torch.autocast(features.device.type, enabled=False):
        f = features.to(torch.promote_types(features.dtype, torch.float32)).flatten(2)
        gram = f @ f.transpose(1, 2)  # f is B x N' x M, i.e. F^T per image
        return gram / f.shape[2] if normalize else gram


class SentimentVectorHead(nn.Module):
    """P2's sentiment vector and a softmax classifier over ``L`` backbone stages.

    Per stage ``l``: a 1x1 conv to ``N'`` channels + ReLU gives ``F_l`` (``M_l x N'``,
    ``M_l = H_l W_l``); the Gram matrix ``Phi_l = F_l^T F_l / M_l``; its upper triangle with
    the diagonal, ``N'(N'+1)/2`` values (row by row; by symmetry the same sequence as P2's
    ``[Phi_11, Phi_21, ..., Phi_N'N']``). ``SV = [SV_1, ..., SV_L] / ||[SV_1, ..., SV_L]||``.

    Choices P2 leaves open:

    - ``reduced_channels`` (``N'``) = 64: 2,080 values per stage, so four stages give an SV of
      8,320 values, the order of a CNN's pooled feature, and a ResNet's first stage is not
      widened.
    - ``normalize_gram``: divide ``Phi_l`` by ``M_l`` (P2's formula does not). Without it a
      stage's Gram grows with its number of positions, and the early, large stages would
      dominate the L2-normalised concatenation; with it every stage is a mean over positions.
    - ``classifier_input``: ``"pooled"`` (default) puts the softmax classifier on the pooled
      feature, as P2 fine-tunes the network's last fully connected layer and keeps the SV for
      the metric; that feature is ``forward``'s ``pooled`` (``pooled_channels`` wide,
      default ``C_L``) or, if None, the global average of the last given stage. ``"sv"``
      puts it on the SV instead (``pooled`` is then ignored).

    ``forward(stages, pooled=None)`` returns ``{"embedding": SV (B x D), "logits": B x K}``.
    The Gram, the SV and the classifier run in float32 with autocast off; the 1x1 convs
    follow the caller's autocast.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = 8,
        *,
        reduced_channels: int = 64,
        classifier_input: str = "pooled",
        pooled_channels: int | None = None,
        normalize_gram: bool = True,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                                  for c in in_channels):
            raise ValueError(f"in_channels must be a non-empty list of positive ints, "
                             f"got {in_channels!r}")
        sizes = [("num_classes", num_classes), ("reduced_channels", reduced_channels)]
        if pooled_channels is not None:
            sizes.append(("pooled_channels", pooled_channels))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if classifier_input not in CLASSIFIER_INPUTS:
            raise ValueError(f"classifier_input must be one of {CLASSIFIER_INPUTS}, "
                             f"got {classifier_input!r}")
        self.in_channels = in_channels
        self.reduced_channels = reduced_channels
        self.classifier_input = classifier_input
        self.normalize_gram = normalize_gram
        self.reduce = nn.ModuleList(nn.Conv2d(c, reduced_channels, 1) for c in in_channels)
        # Upper-triangle indices (i <= j), fixed by N': built once, moved with the module.
        self.register_buffer("triu", torch.triu_indices(reduced_channels, reduced_channels),
                             persistent=False)
        self.embedding_dim = len(in_channels) * reduced_channels * (reduced_channels + 1) // 2
        self.pooled_channels = in_channels[-1] if pooled_channels is None else pooled_channels
        features = self.embedding_dim if classifier_input == "sv" else self.pooled_channels
        self.classifier = nn.Linear(features, num_classes)

    def _check_stages(self, stages: Sequence[torch.Tensor]) -> None:
        if len(stages) != len(self.in_channels):
            raise ValueError(f"stages: expected {len(self.in_channels)} feature maps, "
                             f"got {len(stages)}")
        for i, (x, c) in enumerate(zip(stages, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"stages[{i}] must be B x {c} x H x W, got {tuple(x.shape)}")

    def sentiment_vector(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        """``B x embedding_dim``: the unit-norm SV of the stage feature maps."""
        self._check_stages(stages)
        rows, cols = self.triu
        parts = [gram_matrix(F.relu(conv(x)), self.normalize_gram)[:, rows, cols]
                 for conv, x in zip(self.reduce, stages)]
        with torch.autocast(stages[0].device.type, enabled=False):
            return F.normalize(torch.cat(parts, 1), dim=1)

    def forward(
        self, stages: Sequence[torch.Tensor], pooled: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        sv = self.sentiment_vector(stages)
        with torch.autocast(sv.device.type, enabled=False):
            if self.classifier_input == "sv":
                features = sv
            else:
                features = stages[-1].float().mean((2, 3)) if pooled is None else pooled.float()
                if features.shape != (len(sv), self.pooled_channels):
                    raise ValueError(f"pooled must be B x {self.pooled_channels} = "
                                     f"{len(sv)} x {self.pooled_channels}, "
                                     f"got {tuple(features.shape)}")
            return {"embedding": sv, "logits": self.classifier(features)}

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, reduced_channels={self.reduced_channels}, "
                f"embedding_dim={self.embedding_dim}, classifier_input={self.classifier_input!r},"
                f" normalize_gram={self.normalize_gram}")


class SentimentModel(ImageModel):
    """P2's network: a timm CNN whose ``stages`` (timm's ``forward_intermediates`` indices:
    an int for the last n stages, or a list) feed a :class:`SentimentVectorHead`; the
    classifier reads the pooled final feature map (``forward_head(pre_logits=True)``), as P2
    fine-tunes the network's own classifier. ``forward(x)`` returns ``{"embedding": SV,
    "logits"}``; ``embed(x)`` is the SV, so t-SNE/UMAP plots show the metric space.
    """

    def __init__(self, backbone: str, num_classes: int, *, stages: int | Sequence[int] = 4,
                 reduced_channels: int = 64, classifier_input: str = "pooled",
                 normalize_gram: bool = True, **kwargs):
        super().__init__(backbone, **kwargs)
        if not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(f"backbone {backbone!r} has no forward_intermediates; the sentiment "
                             "head needs a timm model that returns its stage feature maps")
        self.stages = stages if isinstance(stages, int) else list(stages)
        self.head = SentimentVectorHead(stage_channels(self.backbone, self.stages), num_classes,
                                        reduced_channels=reduced_channels, classifier_input=classifier_input,
                                        pooled_channels=self.num_features, normalize_gram=normalize_gram)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        final, stages = self.backbone.forward_intermediates(x, indices=self.stages)
        return self.head(stages, self.pool(final))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)["embedding"]

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``B x K x h x w`` of the classifier on the pooled feature
        (exact where the backbone pools by global averaging, as CNNs do; bias spread over
        the grid). With ``classifier_input="sv"`` there is none: the SV is not linear in
        the feature map."""
        if self.head.classifier_input != "pooled":
            raise ValueError("class activation maps need classifier_input='pooled'; this classifier reads the SV")
        lin = self.head.classifier
        fmap = self.features(x).float()
        return torch.einsum("bfhw,cf->bchw", fmap, lin.weight) + lin.bias[None, :, None, None]
