"""timm backbones, optionally initialised from a local weights file through timm's own loading."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# timm imports huggingface_hub, whose tqdm.auto warns "IProgress not found" in every Jupyter
# kernel without ipywidgets. Nothing here draws a progress bar (training prints a line per
# epoch), so the warning would only clutter each executed notebook.
warnings.filterwarnings("ignore", message="IProgress not found")
import timm
from torch import nn


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model; the message names it."""


class _LoadReport(logging.Handler):
    """Collects what timm's loader logs about keys it could not place: timm loads a
    classifier-less model non-strictly and only logs missing or unexpected keys."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Missing keys", "Unexpected keys")):
            self.messages.append(message.split(" discovered")[0].split(" found")[0])


def weights_path(weights_file: str | Path) -> Path:
    """Where ``weights_file`` is: a relative path under ``$ANNOTLIB_WEIGHTS_ROOT`` where that is
    set (as datasets resolve under ``$ANNOTLIB_DATA_ROOT``, so a config names a file without
    one machine's folders), else as given."""
    path = Path(weights_file)
    root = os.environ.get("ANNOTLIB_WEIGHTS_ROOT")
    return Path(root) / path if root and not path.is_absolute() else path


def create_backbone(name: str, *, weights_file: str | Path | None = None, pretrained: bool = False,
                    **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): ``forward_features`` gives its
    last feature map (tokens for a ViT), ``forward_head(..., pre_logits=True)`` the pooled vector.

    ``weights_file`` (see :func:`weights_path`) initialises it from a local file through timm's loader
    (``pretrained_cfg_overlay=dict(file=...)``), so the model's own checkpoint filters
    apply; ``pretrained`` asks timm's hub instead, for machines that can reach it. A file
    that does not fit the model is a :class:`WeightsError` naming it.
    """
    if weights_file is not None and pretrained:
        raise ValueError("give either weights_file or pretrained=True, not both")
    if weights_file is None:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    path = weights_path(weights_file)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    report = _LoadReport()
    logger = logging.getLogger("timm.models._builder")
    logger.addHandler(report)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as err:  # noqa: BLE001 -- any reader failure means the same thing to the user
        if "Error(s) in loading state_dict" in str(err):  # tensors of the wrong shape
            raise WeightsError(f"{path}: does not fit {name}: "
                               f"{str(err).strip().splitlines()[-1].strip()}") from None
        raise WeightsError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)
    # BatchNorm step counters are bookkeeping, absent from many exported files.
    problems = [m for m in report.messages if "Missing keys" not in m
                or any(not k.strip().endswith("num_batches_tracked")
                       for k in m[m.index("(") + 1:m.rindex(")")].split(","))]
    if problems:
        raise WeightsError(f"{path}: does not fit {name}: " + "; ".join(problems))
    return model
