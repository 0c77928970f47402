"""Fixtures of the TensorRT tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from trt_tiny_model import export_tiny  # tests/trt is on sys.path (rootdir-relative imports)


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    """A tiny detector ONNX file with ``decode/`` nodes and profile metadata."""
    return export_tiny(tmp_path / "tiny.onnx")
