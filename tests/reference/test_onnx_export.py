"""An mmdet 3.3 LD checkpoint exported by ``ldexport onnx`` detects in ONNX Runtime what
mmdet's own ``predict`` detects, on a coco128 photograph."""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.config import config_to_dict
from ldexport.export.metadata import read_onnx_info
from ldexport.model.detector import Detections
from ldexport.parity.detections import detections_from_outputs, match_detections
from ldexport.parity.inputs import image_cases

from tests.reference.mmdet_reference import STUDENT, build_mmdet_ld

pytestmark = pytest.mark.reference

COCO128_IMAGES = Path(
    os.environ.get("LDEXPORT_COCO128", Path(__file__).resolve().parents[3] / "shared/data/coco128")
) / "images/train2017"
SIZE = (160, 224)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """mmdet's LD detector, its checkpoint as mmdet saves it, and the graph ldexport exports."""
    folder = tmp_path_factory.mktemp("mmdet_onnx")
    detector = build_mmdet_ld()
    with torch.no_grad():  # detections above score_thr from random weights
        detector.bbox_head.gfl_cls.bias.normal_(-1.5, 0.3, generator=torch.Generator().manual_seed(5))
    detector.eval()
    checkpoint = folder / "ld_r18_mmdet.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": detector.state_dict()}, checkpoint)
    config = folder / "student.yaml"
    config.write_text(yaml.safe_dump({"model": config_to_dict(STUDENT)}))
    graph = folder / "student.onnx"
    args = ["onnx", str(config), str(checkpoint), "-o", str(graph), "--shape", "x".join(map(str, SIZE)), "--nms"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return detector, graph


def _inputs(graph: Path) -> list[np.ndarray]:
    info = read_onnx_info(graph)
    photos = sorted(COCO128_IMAGES.glob("*.jpg"))[:3]
    if photos:
        return [case.images for case in image_cases(photos, info.input_spec)]
    return [np.random.default_rng(0).standard_normal((1, 3, *SIZE), dtype=np.float32)]


def test_onnx_from_mmdet_checkpoint_detects_like_mmdet(exported):
    from mmdet.structures import DetDataSample

    detector, graph = exported
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    total = 0
    for images in _inputs(graph):
        outputs = dict(zip(("num_dets", "det_boxes", "det_scores", "det_labels"), session.run(None, {"images": images})))
        # the graph clips to its input, so mmdet's image is the whole (padded) input
        meta = dict(img_shape=SIZE, ori_shape=SIZE, pad_shape=SIZE, batch_input_shape=SIZE, scale_factor=(1.0, 1.0))
        with torch.no_grad():
            (result,) = detector.predict(torch.from_numpy(images), [DetDataSample(metainfo=meta)], rescale=False)
        theirs = result.pred_instances
        expected = Detections(boxes=theirs.bboxes, scores=theirs.scores, labels=theirs.labels)
        match = match_detections([expected], detections_from_outputs(outputs))
        assert match.passed, match
        assert match.max_box_error <= 1e-3 and match.max_score_error <= 1e-5
        total += match.reference
    assert total > 10
