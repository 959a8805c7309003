"""annotlib: reproducible deep image annotation in one PyTorch library."""

__version__ = "0.1.0"
