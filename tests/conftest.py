import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def shared_data_root() -> Path | None:
    """The real datasets: $ANNOTLIB_DATA_ROOT, else ../shared/data beside the repository."""
    root = Path(os.environ.get("ANNOTLIB_DATA_ROOT", REPO.parent / "shared" / "data"))
    return root if root.is_dir() else None


def shared_weights() -> Path | None:
    path = REPO.parent / "shared" / "weights" / "mobilenetv2_100.imagenet_int8dequant.fp16.safetensors"
    path = Path(os.environ.get("ANNOTLIB_MOBILENETV2_WEIGHTS", path))
    return path if path.is_file() else None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes its image cache under a per-session temporary folder, and the roots
    that ``run_all.sh`` points its notebooks at are as they were after each test."""
    monkeypatch.setenv("ANNOTLIB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    saved = {name: os.environ.get(name) for name in ("ANNOTLIB_DATA_ROOT", "ANNOTLIB_WEIGHTS_ROOT")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real datasets not found (set ANNOTLIB_DATA_ROOT)")
    return root


@pytest.fixture
def mobilenet_weights() -> Path:
    path = shared_weights()
    if path is None:
        pytest.skip("MobileNetV2 weights not found")
    return path
