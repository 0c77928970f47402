"""Engine sidecars on disk, and the comparison with what is installed (no TensorRT needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ldexport.errors import LdexportError
from ldexport.io import atomic_write_bytes, sha256_file
from ldexport.trt.sidecar import (
    check_sidecar,
    compare_environment,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]}
BUILT = {
    "tensorrt_version": "10.13.0.35",
    "gpu": H100,
    "ldexport_version": "0.1.0",
    "precision": {"fp16": True, "int8": False},
    "profile": {"images": {"min": [1, 3, 320, 320], "opt": [1, 3, 640, 640], "max": [1, 3, 1024, 1024]}},
    "onnx": {"file": "model.onnx", "sha256": "0" * 64},
}


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "model.engine"
    path.write_bytes(b"not really an engine")
    write_sidecar(path, BUILT)
    return path


def test_sidecar_is_json_beside_the_engine(engine: Path) -> None:
    assert sidecar_path(engine).name == "model.engine.json"
    on_disk = json.loads(sidecar_path(engine).read_text())
    assert on_disk["format"] == 1 and on_disk["gpu"] == H100
    assert read_sidecar(engine) == on_disk
    assert not list(engine.parent.glob("*.tmp"))  # the temporary file was renamed


def test_same_environment_has_no_difference(engine: Path) -> None:
    sidecar = read_sidecar(engine)
    assert sidecar is not None
    assert compare_environment(sidecar, {"tensorrt_version": "10.13.0.35", "gpu": dict(H100)}) == []
    check_sidecar(engine, {"tensorrt_version": "10.13.0.35", "gpu": H100})  # does not raise


def test_each_difference_is_named(engine: Path) -> None:
    sidecar = read_sidecar(engine)
    assert sidecar is not None
    installed = {"tensorrt_version": "10.14.1.48", "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": [8, 0]}}
    differences = compare_environment(sidecar, installed)
    assert differences == [
        "TensorRT 10.13.0.35 built it, TensorRT 10.14.1.48 is installed",
        "it was built for compute capability 9.0, this GPU has 8.0",
        "it was built on GPU 'NVIDIA H100 80GB HBM3', this GPU is 'NVIDIA A100-SXM4-80GB'",
    ]
    only_name = {"tensorrt_version": "10.13.0.35", "gpu": {"name": "NVIDIA H100 PCIe", "compute_capability": (9, 0)}}
    assert compare_environment(sidecar, only_name) == [
        "it was built on GPU 'NVIDIA H100 80GB HBM3', this GPU is 'NVIDIA H100 PCIe'"
    ]


def test_mismatch_raises_one_line_naming_the_difference(engine: Path) -> None:
    installed = {"tensorrt_version": "10.12.0.36", "gpu": H100}
    with pytest.raises(LdexportError) as error:
        check_sidecar(engine, installed)
    message = str(error.value)
    assert "\n" not in message
    assert "TensorRT 10.13.0.35 built it, TensorRT 10.12.0.36 is installed" in message
    assert "compute capability" not in message


def test_missing_sidecar_is_an_error_or_a_warning(tmp_path: Path) -> None:
    engine = tmp_path / "bare.engine"
    engine.write_bytes(b"x")
    installed = {"tensorrt_version": "10.13.0.35", "gpu": H100}
    with pytest.raises(LdexportError, match="has no sidecar bare.engine.json"):
        check_sidecar(engine, installed)
    with pytest.warns(UserWarning, match="has no sidecar"):
        check_sidecar(engine, installed, missing="warn")


def test_unreadable_sidecar_is_a_user_error(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(LdexportError, match="cannot read engine sidecar"):
        read_sidecar(engine)


def test_atomic_write_replaces_and_hashes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert sha256_file(path) == hashlib.sha256(b"new contents").hexdigest()
    with pytest.raises(LdexportError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x.bin", b"")
