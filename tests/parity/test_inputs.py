"""Parity inputs: photographs fed by the graph's input contract, random images, batches."""

import dataclasses

import numpy as np
import pytest
import torch
from export_helpers import TRAIN_SCALE

from ldexport.data.image_io import read_image
from ldexport.data.input_spec import InputSpec
from ldexport.data.transforms import normalize, rescale_size, resize_image
from ldexport.errors import LdexportError
from ldexport.io import list_images
from ldexport.parity.inputs import image_cases, random_cases

STATIC = InputSpec.for_graph(preprocess=False, dynamic=False, size=(128, 160), batch=2, scale=TRAIN_SCALE)
DYNAMIC = InputSpec.for_graph(preprocess=False, dynamic=True, size=(128, 160), batch=1, scale=TRAIN_SCALE)


def test_static_graph_photos_are_letterboxed_into_the_fixed_batch(photos):
    cases = image_cases(photos[:3], STATIC)
    assert [case.images.shape for case in cases] == [(2, 3, 128, 160)] * 2
    assert cases[1].name == photos[2].name  # the last batch is filled with its last image
    np.testing.assert_array_equal(cases[1].images[0], cases[1].images[1])
    # 000000000009.jpg is 640x480: 160x120 inside, the bottom 8 rows padded with 0
    assert cases[0].images[0, :, 119].any() and not cases[0].images[0, :, 120:].any()


def test_dynamic_graph_photos_follow_training_resize_and_are_padded_to_32(photos):
    cases = image_cases(photos, DYNAMIC)
    shapes = {case.name: case.images.shape for case in cases}
    assert shapes["000000000009.jpg"] == (1, 3, 128, 160)
    assert shapes["000000000036.jpg"] == (1, 3, 160, 128)  # portrait: long side 160, as mmdet's Resize
    assert all(shape[2] % 32 == 0 and shape[3] % 32 == 0 for shape in shapes.values())
    batched = image_cases(photos[3:5], DYNAMIC, batch=2)
    assert len(batched) == 1 and batched[0].images.shape[0] == 2


def test_the_feed_is_training_validation_pipeline_exactly(photos):
    """The one rule: keep-ratio size, OpenCV-like resize, normalise, pad with 0 after."""
    image = read_image(photos[1])
    new_width, new_height, _ = rescale_size(image.shape[2], image.shape[1], TRAIN_SCALE)
    expected = normalize(resize_image(image, (new_height, new_width)))
    feed = DYNAMIC.to_feed(image)
    np.testing.assert_array_equal(feed.images[0, :, :new_height, :new_width], expected.numpy())
    assert not feed.images[0, :, new_height:].any() and not feed.images[0, :, :, new_width:].any()
    assert feed.metas[0].image_size == (new_height, new_width)


def test_preprocessing_graphs_get_the_same_pixels_as_bgr_bytes(photos):
    floats = image_cases(photos[:1], DYNAMIC)[0].images[0]
    nhwc = InputSpec.for_graph(preprocess=True, dynamic=True, size=(128, 160), batch=1, scale=TRAIN_SCALE)
    raw = image_cases(photos[:1], nhwc)[0].images[0]
    assert raw.dtype == np.uint8 and raw.shape == (128, 160, 3)
    normalised = normalize(torch.from_numpy(raw[..., ::-1].copy()).permute(2, 0, 1))
    np.testing.assert_array_equal(normalised[:, :120].numpy(), floats[:, :120])


def test_random_cases():
    cases = random_cases([(64, 96), (192, 128)], DYNAMIC, batch=3)
    assert [case.images.shape for case in cases] == [(3, 3, 64, 96), (3, 3, 192, 128)]
    # a static graph takes only its own shape, in its own batch
    assert [case.images.shape for case in random_cases([(128, 160)], STATIC, batch=5)] == [(2, 3, 128, 160)]
    with pytest.raises(LdexportError, match="static: it takes 128x160 only, not 64x96"):
        random_cases([(64, 96)], STATIC)
    with pytest.raises(LdexportError, match="multiple of 32"):
        random_cases([(70, 96)], DYNAMIC)


def test_a_static_batch_refuses_more_images(photos):
    with pytest.raises(LdexportError, match="batches of 2"):
        STATIC.read(photos[:3])


def test_unreadable_photographs(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(LdexportError, match="cannot read image"):
        image_cases(list_images(tmp_path), DYNAMIC)


def test_the_spec_round_trips_through_json():
    for spec in (STATIC, DYNAMIC, dataclasses.replace(DYNAMIC, mean=(1.0, 2.0, 3.0))):
        assert InputSpec.from_json(spec.to_json()) == spec
    with pytest.raises(LdexportError, match="malformed input spec"):
        InputSpec.from_json({"layout": "NCHW"})
    with pytest.raises(LdexportError, match="not supported"):
        InputSpec(layout="NHWC")


def test_default_random_sizes_add_the_largest_input_and_keep_to_an_engines_profile(tmp_path):
    from ldexport.runtime.parity import _engine_largest, default_random_sizes
    from ldexport.trt.sidecar import write_sidecar

    assert default_random_sizes(DYNAMIC, quantized=False) == ([(192, 256), (320, 480), (448, 352), (160, 160)], None)
    sizes, note = default_random_sizes(DYNAMIC, quantized=False, engine_largest=(256, 256))
    assert sizes == [(192, 256), (160, 160)]
    assert note == "random inputs of 320x480, 448x352 skipped: above the engine's profile (256x256)"
    # the profile as `ldexport trt` records it, NCHW and NHWC
    engine = tmp_path / "model.engine"
    write_sidecar(engine, {"profile": {"images": {"min": [1, 3, 64, 64], "opt": [1, 3, 128, 160], "max": [2, 3, 256, 320]}}})
    assert _engine_largest(engine, DYNAMIC) == (256, 320)
    write_sidecar(engine, {"profile": {"images": {"min": [1, 64, 64, 3], "opt": [1, 128, 160, 3], "max": [2, 256, 320, 3]}}})
    assert _engine_largest(engine, dataclasses.replace(DYNAMIC, layout="NHWC", dtype="uint8", channel_order="BGR")) == (256, 320)
