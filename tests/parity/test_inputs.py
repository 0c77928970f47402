"""Parity inputs: photographs resized as deployment resizes them, random images, batches."""

from dataclasses import replace

import numpy as np
import pytest
from export_helpers import CLASS_NAMES, TEST_CFG, TINY

from ldexport.errors import LdexportError
from ldexport.export.metadata import ExportInfo
from ldexport.export.preprocess import DEFAULT_MEAN, DEFAULT_STD
from ldexport.parity.inputs import image_cases, list_images, random_cases
from ldexport.trt.preprocess import preprocess

STATIC = ExportInfo(
    ldexport_version="0", checkpoint_sha256="0", model_config=TINY, class_names=CLASS_NAMES, preprocess=False,
    mean=DEFAULT_MEAN, std=DEFAULT_STD, nms="none", test_cfg=TEST_CFG, dynamic=False,
    min_shape=(2, 3, 128, 160), opt_shape=(2, 3, 128, 160), max_shape=(2, 3, 128, 160),
)
DYNAMIC = replace(STATIC, dynamic=True, min_shape=(1, 3, 64, 64), opt_shape=(1, 3, 128, 160), max_shape=(4, 3, 640, 640))


def test_static_graph_photos_are_letterboxed_like_tensorrt_calibration(photos):
    cases = image_cases(photos[:3], STATIC)
    assert [case.images.shape for case in cases] == [(2, 3, 128, 160)] * 2
    assert cases[1].name == photos[2].name  # the last batch is filled with its last image
    np.testing.assert_array_equal(cases[1].images[0], cases[1].images[1])
    expected = preprocess(photos[0], shape=(3, 128, 160), dtype=np.float32, normalisation=(DEFAULT_MEAN, DEFAULT_STD))
    np.testing.assert_allclose(cases[0].images[0], expected, atol=1e-6)
    # 000000000009.jpg is 640x480: 160x120 inside, the bottom 8 rows padded with 0
    assert cases[0].images[0, :, 119].any() and not cases[0].images[0, :, 120:].any()


def test_dynamic_graph_photos_are_padded_to_32_only(photos):
    cases = image_cases(photos, DYNAMIC)
    shapes = {case.name: case.images.shape for case in cases}
    assert shapes["000000000009.jpg"] == (1, 3, 128, 160)
    assert shapes["000000000036.jpg"] == (1, 3, 128, 96)  # portrait
    assert all(shape[2] % 32 == 0 and shape[3] % 32 == 0 for shape in shapes.values())
    batched = image_cases(photos[3:5], DYNAMIC, batch=2)
    assert len(batched) == 1 and batched[0].images.shape[0] == 2


def test_preprocessing_graphs_get_the_same_pixels_as_bgr_bytes(photos):
    floats = image_cases(photos[:1], DYNAMIC)[0].images[0]
    nhwc = replace(DYNAMIC, preprocess=True, min_shape=(1, 64, 64, 3), opt_shape=(1, 128, 160, 3), max_shape=(4, 640, 640, 3))
    raw = image_cases(photos[:1], nhwc)[0].images[0]
    assert raw.dtype == np.uint8 and raw.shape == (128, 160, 3)
    normalised = (raw[..., ::-1].astype(np.float32) - np.float32(DEFAULT_MEAN)) / np.float32(DEFAULT_STD)
    np.testing.assert_allclose(normalised[:120].transpose(2, 0, 1), floats[:, :120], atol=1e-6)


def test_random_cases():
    cases = random_cases([(64, 96), (192, 128)], DYNAMIC, batch=3)
    assert [case.images.shape for case in cases] == [(3, 3, 64, 96), (3, 3, 192, 128)]
    # a static graph takes only its own shape and batch
    assert [case.images.shape for case in random_cases([(64, 96)], STATIC)] == [(2, 3, 128, 160)]
    with pytest.raises(LdexportError, match="multiple of 32"):
        random_cases([(70, 96)], DYNAMIC)


def test_image_folders(tmp_path, photos):
    assert list_images(photos[0].parent, max_images=2) == sorted(photos[0].parent.glob("*.jpg"))[:2]
    with pytest.raises(LdexportError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(LdexportError, match="not found"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LdexportError, match="cannot read image"):
        image_cases(list_images(tmp_path), DYNAMIC)
