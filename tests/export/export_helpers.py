"""Tiny detectors, their exported graphs and coco128 photographs, shared by the export and
parity tests (``tests/parity/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ldexport.export.deploy import build_deploy_model
from ldexport.export.exporter import export_onnx
from ldexport.export.metadata import export_metadata
from ldexport.export.options import ExportOptions
from ldexport.data.input_spec import InputSpec
from ldexport.model import GFLDetector, ModelConfig, TestConfig, build_detector

TINY = ModelConfig(depth=18, num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=1, norm_groups=8)
CLASS_NAMES = ("cat", "dog", "kite")
# mmdet's GFL settings; the tiny detector's scores put tens of detections above 0.05
TEST_CFG = TestConfig()
SHA256 = "0" * 64
EXPORT_SIZE = (128, 160)
# the keep-ratio edge limits (long, short) of the dynamic test graphs: a 640x480 photo -> 160x120
TRAIN_SCALE = (160, 128)

COCO128_IMAGES = Path(
    os.environ.get("LDEXPORT_COCO128", Path(__file__).resolve().parents[3] / "shared/data/coco128")
) / "images/train2017"


@functools.cache
def tiny_detector(seed: int = 0, config: ModelConfig = TINY) -> GFLDetector:
    """A randomly initialised tiny detector whose outputs are far from their initial values.

    Every weight is perturbed (fresh GroupNorm, Scale and bias values would hide mistakes)
    and the classification bias is raised so that photographs give tens of detections
    with spread-out, unsaturated scores. Cached: callers must not modify it.
    """
    torch.manual_seed(seed)
    model = build_detector(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
        model.head.gfl_cls.bias.fill_(-1.5)
        for scale in model.head.scales:
            scale.scale.fill_(1.0 + 0.5 * torch.rand(()).item())
    return model.eval()


def export_tiny(
    detector: GFLDetector,
    path: Path,
    *,
    test_cfg: TestConfig = TEST_CFG,
    size: tuple[int, int] = EXPORT_SIZE,
    **options,
) -> Path:
    """Exports ``detector`` as ``ldexport onnx`` does, with ``ExportOptions(**options)``."""
    export = ExportOptions(height=size[0], width=size[1], **options)
    deploy = build_deploy_model(
        detector,
        test_cfg=test_cfg,
        nms=export.nms,
        preprocess=export.preprocess,
        static_size=None if export.dynamic else size,
    )
    metadata = export_metadata(
        options=export,
        model_config=TINY,
        test_cfg=test_cfg,
        class_names=CLASS_NAMES,
        checkpoint_sha256=SHA256,
        input_spec=graph_spec(export),
    )
    return export_onnx(deploy, path, options=export, metadata=metadata)


def graph_spec(export: ExportOptions) -> InputSpec:
    """The input contract of a test graph: letterboxed into a static graph's size, or
    mmdet's keep-ratio rule with the export size as the edge limits (``TRAIN_SCALE``)."""
    return InputSpec.for_graph(
        preprocess=export.preprocess,
        dynamic=export.dynamic,
        size=(export.height, export.width),
        batch=export.batch,
        scale=TRAIN_SCALE,
    )


def with_classes(config: ModelConfig, num_classes: int) -> ModelConfig:
    """``config`` with another number of classes."""
    return replace(config, num_classes=num_classes)


# Fixtures, imported by the conftest.py of tests/export and tests/parity.


@pytest.fixture(scope="session")
def detector() -> GFLDetector:
    """The tiny detector every graph of the session is exported from."""
    return tiny_detector()


# exported graphs of the session, by options; shared by tests/export and tests/parity
_GRAPHS: dict[tuple, Path] = {}


@pytest.fixture(scope="session")
def graph(detector: GFLDetector, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``graph(**options)``: the detector exported with ``ExportOptions(**options)``, once."""

    def make(**options) -> Path:
        key = tuple(sorted(options.items()))
        if key not in _GRAPHS:
            name = "_".join(f"{k}-{v}" for k, v in key) or "default"
            _GRAPHS[key] = export_tiny(detector, tmp_path_factory.mktemp("graph") / f"{name}.onnx", **options)
        return _GRAPHS[key]

    return make


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """Eight coco128 photographs, read in place."""
    if not COCO128_IMAGES.is_dir():
        pytest.skip(f"coco128 not found at {COCO128_IMAGES}")
    return sorted(COCO128_IMAGES.glob("*.jpg"))[:8]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread in these tests, restored after each module.

    On 2 shared cores torch's OpenMP threads spin against the other processes: with 2
    threads a tiny detector's first forward at a new input size took 1.8 s, with one 35 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
