"""Backbones and per-paper heads."""

from .annotator import Annotator
from .backbone import WeightsError, create_backbone, read_state_dict

__all__ = ["Annotator", "WeightsError", "create_backbone", "read_state_dict"]
