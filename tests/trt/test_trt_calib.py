"""Calibration images through the deployment preprocessing (pure numpy, no TensorRT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldexport.errors import LdexportError
from ldexport.trt.calib import CalibrationBatches
from ldexport.trt.preprocess import letterbox, list_images, normalisation_from_metadata, preprocess

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _image(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, rgb).save(path)  # size is (width, height)
    return path


def test_letterbox_keeps_the_ratio_and_pads_bottom_right() -> None:
    canvas, (h, w) = letterbox(Image.new("RGB", (100, 50), (255, 0, 0)), 64, 64)
    assert canvas.shape == (64, 64, 3) and (h, w) == (32, 64)
    assert (canvas[:32, :, 0] == 255).all() and (canvas[32:] == 0).all()


def test_float_input_is_normalised_rgb_with_zero_padding(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (40, 20), (200, 100, 50))
    sample = preprocess(path, shape=(3, 32, 32), dtype=np.dtype(np.float32), normalisation=(MEAN, STD))
    assert sample.shape == (3, 32, 32) and sample.dtype == np.float32
    expected = (np.array([200, 100, 50]) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(sample[:, :16, :].reshape(3, -1).mean(1), expected, rtol=1e-5)
    assert (sample[:, 16:, :] == 0).all()  # padded after normalisation


def test_uint8_input_is_bgr_bytes(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (32, 32), (200, 100, 50))
    sample = preprocess(path, shape=(32, 32, 3), dtype=np.dtype(np.uint8), normalisation=None)
    assert sample.dtype == np.uint8 and tuple(sample[0, 0]) == (50, 100, 200)


def test_float_input_without_normalisation_is_a_user_error(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (8, 8), (0, 0, 0))
    with pytest.raises(LdexportError, match="'mean'/'std'"):
        preprocess(path, shape=(3, 8, 8), dtype=np.dtype(np.float32), normalisation=None)


def test_batches_at_the_opt_shape(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    paths = [_image(folder / f"{i}.jpg", (30 + i, 20), (i * 40, 0, 0)) for i in range(3)]
    paths.append(_image(folder / "sub" / "deep.png", (16, 16), (0, 255, 0)))
    (folder / "notes.txt").write_text("not an image")
    found = list_images(folder)
    assert found == sorted(paths)
    batches = CalibrationBatches(found, shape=(2, 3, 24, 24), dtype=np.dtype(np.float32), normalisation=(MEAN, STD))
    arrays = list(batches)
    assert len(batches) == 2 and [a.shape for a in arrays] == [(2, 3, 24, 24)] * 2
    one = CalibrationBatches(found[:1], shape=(4, 3, 24, 24), dtype=np.dtype(np.float32), normalisation=(MEAN, STD))
    (only,) = list(one)  # a single image fills the batch by repetition
    assert only.shape == (4, 3, 24, 24) and np.array_equal(only[0], only[3])


def test_metadata_normalisation_and_empty_folder(tmp_path: Path) -> None:
    props = {"mean": "[123.675, 116.28, 103.53]", "std": "[58.395, 57.12, 57.375]"}
    assert normalisation_from_metadata(props) == (MEAN, STD)
    assert normalisation_from_metadata({}) is None
    with pytest.raises(LdexportError, match="list of 3 numbers"):
        normalisation_from_metadata({"mean": "[1, 2]", "std": "[1, 2, 3]"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdexportError, match="no images"):
        list_images(tmp_path / "empty")
