"""``predict`` on a checkpoint and on its ONNX export: the same boxes, drawn for real."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from ldexport.cli import main
from ldexport.io import list_images
from ldexport.model.detector import Detections
from ldexport.parity.detections import match_detections
from ldexport.runtime.draw import class_colour
from ldexport.runtime.model import open_checkpoint, open_onnx
from ldexport.runtime.predict import predict_images


def _as_detections(results, file_name):
    mine = [item for item in results if item["file_name"] == file_name]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (item["bbox"] for item in mine)], np.float32).reshape(-1, 4)
    import torch

    return Detections(
        torch.from_numpy(boxes),
        torch.tensor([item["score"] for item in mine]),
        torch.tensor([item["category_id"] for item in mine]),
    )


def test_checkpoint_and_onnx_draw_the_same_boxes(shapes_student, tmp_path):
    images = list_images(shapes_student.config.data.root + "/val", max_images=6)
    runner = CliRunner()
    outputs = {}
    for name, model_args in (
        ("onnx", ["--onnx", str(shapes_student.onnx)]),
        ("checkpoint", ["--config", str(shapes_student.config_path), "--checkpoint", str(shapes_student.checkpoint)]),
    ):
        out = tmp_path / name
        result = runner.invoke(main, ["predict", *model_args, str(images[0].parent), "--max-images", "6", "-o", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads((out / "detections.json").read_text())
    assert outputs["onnx"], "the student detects nothing above the threshold"
    for path in images:
        found = {name: _as_detections(results, path.name) for name, results in outputs.items()}
        match = match_detections([found["checkpoint"]], [found["onnx"]])
        assert match.passed, (path.name, match)
    # COCO results: the fields the evaluators read
    first = outputs["onnx"][0]
    assert set(first) >= {"image_id", "category_id", "bbox", "score"} and len(first["bbox"]) == 4


def test_the_annotated_image_has_the_boxes_drawn_where_the_detections_are(shapes_student, tmp_path):
    model = open_onnx(shapes_student.onnx)
    images = list_images(shapes_student.config.data.root + "/val", max_images=4)
    predictions = predict_images(model, images, tmp_path, score_thr=0.3)
    checked = 0
    for prediction in predictions:
        found = prediction.detections
        if not len(found.scores):
            continue
        drawn = np.asarray(Image.open(prediction.annotated).convert("RGB")).astype(int)
        original = np.asarray(Image.open(prediction.path).convert("RGB")).astype(int)
        assert drawn.shape == original.shape  # the file's own pixels, not the network's input
        best = int(found.scores.argmax())  # drawn last: nothing covers it
        x1, y1, x2, y2 = found.boxes[best].round().int().tolist()
        colour = np.array(class_colour(int(found.labels[best])))
        bottom = drawn[min(y2, drawn.shape[0] - 1) - 1, (x1 + x2) // 2]
        assert np.abs(bottom - colour).max() <= 60, (bottom, colour)  # JPEG keeps the colour roughly
        inside = drawn[(y1 + y2) // 2, (x1 + x2) // 2]
        assert np.abs(inside - original[(y1 + y2) // 2, (x1 + x2) // 2]).max() <= 40  # the inside is the photo
        checked += 1
    assert checked > 0


def test_checkpoint_predict_uses_trainings_contract(shapes_student):
    model = open_checkpoint(shapes_student.config, shapes_student.checkpoint)
    assert model.spec.resize == "keep_ratio" and model.spec.scale == tuple(shapes_student.config.data.scale)
    assert model.spec == open_onnx(shapes_student.onnx).spec  # a dynamic export records the same contract
