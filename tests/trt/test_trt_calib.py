"""Calibration images through the graph's input contract (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldexport.data.input_spec import InputSpec
from ldexport.errors import LdexportError
from ldexport.io import list_images
from ldexport.trt.calib import CalibrationBatches

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
FLOAT = InputSpec(scale=(1333, 800))
BYTES = InputSpec(layout="NHWC", dtype="uint8", channel_order="BGR")


def _image(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, rgb).save(path)  # size is (width, height)
    return path


def test_float_input_is_letterboxed_normalised_rgb_with_zero_padding(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (40, 20), (200, 100, 50))
    (sample,) = list(CalibrationBatches([path], spec=FLOAT, shape=(1, 3, 32, 32)))
    assert sample.shape == (1, 3, 32, 32) and sample.dtype == np.float32
    expected = (np.array([200, 100, 50]) - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(sample[0, :, :16, :].reshape(3, -1).mean(1), expected, rtol=1e-5)
    assert (sample[0, :, 16:, :] == 0).all()  # padded after normalisation


def test_uint8_input_is_bgr_bytes(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (32, 32), (200, 100, 50))
    (sample,) = list(CalibrationBatches([path], spec=BYTES, shape=(1, 64, 64, 3)))
    assert sample.dtype == np.uint8 and tuple(sample[0, 0, 0]) == (50, 100, 200)


def test_a_shape_not_laid_out_as_the_graph_is_refused(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", (8, 8), (0, 0, 0))
    with pytest.raises(LdexportError, match="not laid out"):
        CalibrationBatches([path], spec=BYTES, shape=(1, 3, 32, 32))


def test_batches_at_the_opt_shape(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    paths = [_image(folder / f"{i}.jpg", (30 + i, 20), (i * 40, 0, 0)) for i in range(3)]
    paths.append(_image(folder / "sub" / "deep.png", (16, 16), (0, 255, 0)))
    (folder / "notes.txt").write_text("not an image")
    found = list_images(folder, recursive=True)
    assert found == sorted(paths)
    assert list_images(folder) == sorted(paths[:3])  # not recursive: the folder's own images
    batches = CalibrationBatches(found, spec=FLOAT, shape=(2, 3, 32, 32))
    arrays = list(batches)
    assert len(batches) == 2 and [a.shape for a in arrays] == [(2, 3, 32, 32)] * 2
    one = CalibrationBatches(found[:1], spec=FLOAT, shape=(4, 3, 32, 32))
    (only,) = list(one)  # a single image fills the batch by repetition
    assert only.shape == (4, 3, 32, 32) and np.array_equal(only[0], only[3])


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LdexportError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(LdexportError, match="at least one image"):
        CalibrationBatches([], spec=FLOAT, shape=(1, 3, 32, 32))
