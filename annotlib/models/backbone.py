"""timm backbones, optionally initialised from a local weights file."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model; the message names it."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or a torch checkpoint (``weights_only``), unwrapped from
    the usual ``state_dict`` / ``model`` containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "state_dict_ema"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
                    break
    except Exception as err:  # any reader failure means the same thing to the user
        raise WeightsError(f"{path}: cannot read weights ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return state


def load_backbone_weights(model: nn.Module, path: Path, classifier_prefix: str | None) -> None:
    """Load ``path`` into a classifier-less timm ``model``: every backbone tensor must be
    present with the right shape; the file's ImageNet classifier is dropped."""
    state = read_state_dict(path)
    if classifier_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(classifier_prefix + ".")}
    own = model.state_dict()
    # BatchNorm step counters are bookkeeping, absent from many exported files.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in own.keys() & state.keys() if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        def show(items):
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        problems = [f"{len(missing)} missing ({show(missing)})" if missing else "",
                    f"{len(unexpected)} unexpected ({show(unexpected)})" if unexpected else "",
                    f"{len(wrong)} of the wrong shape ({show(wrong)})" if wrong else ""]
        raise WeightsError(f"{path}: does not fit the model: " + "; ".join(p for p in problems if p))
    model.load_state_dict(state, strict=False)


def create_backbone(name: str, *, weights_file: str | Path | None = None, pretrained: bool = False,
                    **kwargs) -> nn.Module:
    """A timm model without classifier or pooling, so ``forward`` returns the last feature map.

    ``weights_file`` initialises it from a local file (timm key layout); ``pretrained``
    asks timm's hub instead, for machines that can reach it.
    """
    if weights_file is not None and pretrained:
        raise ValueError("give either weights_file or pretrained=True, not both")
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", **kwargs)
    if weights_file is not None:
        load_backbone_weights(model, Path(weights_file), model.pretrained_cfg.get("classifier"))
    return model
