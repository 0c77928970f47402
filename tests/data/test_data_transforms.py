"""Resize, flip and normalisation with mmdet's numerics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldexport.data.image_io import read_image
from ldexport.data.pipeline import DetectionTransform, boxes_to_original
from ldexport.data.records import ImageRecord
from ldexport.data.transforms import (
    flip_boxes,
    normalize,
    pad_images,
    padded_size,
    resize_boxes,
    resize_image,
    rescale_size,
    sample_scale,
)


@pytest.mark.parametrize(
    ("width", "height", "scale", "expected"),
    [
        # factor = min(1333/640, 800/480) = 5/3; 640*5/3 = 1066.67 -> int(+0.5) = 1067
        (640, 480, (1333, 800), (1067, 800)),
        # factor = min(1333/500, 800/375) = 2.1333; 500*2.1333 = 1066.67 -> 1067 (truncating gives 1066)
        (500, 375, (1333, 800), (1067, 800)),
        # portrait: factor = min(1333/640, 800/427) = 1.87354; 640*1.87354 = 1199.06 -> 1199
        (427, 640, (1333, 800), (800, 1199)),
        # panorama: the long side binds; factor = 1333/2000 = 0.6665; 500*0.6665 = 333.25 -> 333
        (2000, 500, (1333, 800), (1333, 333)),
        # the scale's order does not matter
        (2000, 500, (800, 1333), (1333, 333)),
        # a small square scale: factor = min(256/200, 256/150) = 1.28; 150*1.28 = 192
        (200, 150, (256, 256), (256, 192)),
    ],
)
def test_rescale_size_matches_mmcv(width: int, height: int, scale: tuple[int, int], expected: tuple[int, int]) -> None:
    new_w, new_h, _ = rescale_size(width, height, scale)
    assert (new_w, new_h) == expected


def test_transform_keeps_per_axis_scale_factor_and_clips_boxes() -> None:
    record = ImageRecord(5, Path("x.png"), 375, 500, torch.tensor([[100.0, 50.0, 510.0, 300.0]]), [0])
    sample = DetectionTransform(scale=(1333, 800))(record, torch.zeros(3, 375, 500, dtype=torch.uint8))
    assert sample.image.shape == (3, 800, 1067)
    assert sample.meta.image_size == (800, 1067) and sample.meta.original_size == (375, 500)
    assert sample.meta.scale_factor == (1067 / 500, 800 / 375)
    w_scale, h_scale = 1067 / 500, 800 / 375
    # x2 = 510 * w_scale lies past the resized width: clipped to 1067
    expected = torch.tensor([[100 * w_scale, 50 * h_scale, 1067.0, 300 * h_scale]])
    torch.testing.assert_close(sample.boxes, expected)


def test_resize_image_matches_opencv_bilinear() -> None:
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for new_w, new_h in ((115, 80), (30, 20), (53, 74)):
        expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        ours = resize_image(torch.from_numpy(image).permute(2, 0, 1), (new_h, new_w)).permute(1, 2, 0).numpy()
        assert ours.shape == expected.shape
        assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_resize_boxes_scales_per_axis_and_clips() -> None:
    boxes = torch.tensor([[-4.0, 10.0, 20.0, 30.0], [50.0, 50.0, 70.0, 90.0]])
    out = resize_boxes(boxes, (2.0, 0.5), (40, 120))
    torch.testing.assert_close(out, torch.tensor([[0.0, 5.0, 40.0, 15.0], [100.0, 25.0, 120.0, 40.0]]))


def test_flip_boxes_as_mmdet() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    torch.testing.assert_close(flip_boxes(boxes, 100), torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.0]]))
    torch.testing.assert_close(flip_boxes(flip_boxes(boxes, 100), 100), boxes)


def test_flipped_box_still_covers_its_object() -> None:
    image = torch.zeros(3, 40, 64, dtype=torch.uint8)
    image[:, 10:30, 5:17] = 255  # the object: x in [5, 17), y in [10, 30)
    record = ImageRecord(1, Path("x.png"), 40, 64, torch.tensor([[5.0, 10.0, 17.0, 30.0]]), [2])
    sample = DetectionTransform(scale=(64, 40), flip_prob=1.0)(record, image)
    assert sample.meta.flipped and sample.meta.image_size == (40, 64)
    torch.testing.assert_close(sample.boxes, torch.tensor([[47.0, 10.0, 59.0, 30.0]]))
    ys, xs = torch.nonzero(sample.image[0] == 255, as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1) == (47, 59, 10, 30)
    torch.testing.assert_close(boxes_to_original(sample.boxes, sample.meta), record.boxes)


def test_boxes_to_original_undoes_resize() -> None:
    boxes = torch.tensor([[12.0, 30.0, 400.0, 200.0]])
    record = ImageRecord(1, Path("x.png"), 375, 500, boxes, [0])
    sample = DetectionTransform(scale=(1333, 800))(record, torch.zeros(3, 375, 500, dtype=torch.uint8))
    torch.testing.assert_close(boxes_to_original(sample.boxes, sample.meta), boxes)


def test_normalisation_of_known_pixels_is_rgb(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red
    pixels[0, 1] = (0, 0, 255)  # blue
    pixels[1, 0] = (10, 200, 30)
    path = tmp_path / "known.png"
    Image.fromarray(pixels).save(path)
    out = normalize(read_image(path))
    assert out.dtype == torch.float32 and out.shape == (3, 2, 2)
    # mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375), channels in RGB order
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([2.248908, -2.035714, -1.804444]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 0, 1], torch.tensor([-2.117904, -2.035714, 2.640000]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out[:, 1, 0], torch.tensor([(10 - 123.675) / 58.395, (200 - 116.28) / 57.12, (30 - 103.53) / 57.375])
    )


def test_pad_images_to_multiple_of_32_with_zero() -> None:
    images = [torch.ones(3, 33, 64), torch.full((3, 10, 65), 2.0)]
    batch = pad_images(images)
    assert batch.shape == (2, 3, 64, 96) and padded_size([(33, 64), (10, 65)]) == (64, 96)
    assert (batch[0, :, :33, :64] == 1).all() and batch[0, :, 33:].abs().sum() == 0 and batch[0, :, :, 64:].abs().sum() == 0
    assert (batch[1, :, :10, :65] == 2).all() and batch[1, :, 10:].abs().sum() == 0


def test_a_worker_pads_its_batch_in_shared_memory() -> None:
    """``shared=True`` (a loader worker's batch): the same batch, built in shared memory,
    so that handing it to the main process copies nothing; the padding value included."""
    images = [torch.randint(0, 256, (3, 33, 64), dtype=torch.uint8), torch.randint(0, 256, (3, 10, 65), dtype=torch.uint8)]
    for value in (0.0, 7.0):
        plain, shared = pad_images(images, pad_value=value), pad_images(images, pad_value=value, shared=True)
        assert shared.is_shared() and not plain.is_shared()
        assert torch.equal(shared, plain) and shared.is_contiguous()


def test_sample_scale_covers_the_range_inclusively() -> None:
    generator = torch.Generator().manual_seed(0)
    scales = {sample_scale(((1333, 640), (1333, 642)), generator) for _ in range(200)}
    assert scales == {(1333, 640), (1333, 641), (1333, 642)}


def test_multi_scale_transform_fits_the_sampled_scale() -> None:
    torch.manual_seed(0)
    transform = DetectionTransform(scale_range=((200, 100), (200, 104)))
    record = ImageRecord(1, Path("x.png"), 60, 80)
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    sizes = {transform(record, image).meta.image_size for _ in range(100)}
    # the short side sets the factor: 80 x 60 -> (short, int(80 * short / 60 + 0.5))
    assert sizes == {(s, int(80 * s / 60 + 0.5)) for s in range(100, 105)}


def test_the_training_read_keeps_the_decoded_memory_and_resizes_to_the_same_bits(tmp_path: Path) -> None:
    """``read_image(channels_last=True)`` (the training pipeline's read) is the decoded
    ``[H, W, 3]`` memory seen as ``[3, H, W]``: no copy, the same pixels, and the resize
    gives the same bits from it as from the channel-major copy."""
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(path)
    planar, interleaved = read_image(path), read_image(path, channels_last=True)
    assert planar.is_contiguous() and interleaved.stride() == (1, 53 * 3, 3)
    assert torch.equal(planar, interleaved)
    for size in ((80, 114), (20, 29)):  # up and down, as the training scales go
        assert torch.equal(resize_image(interleaved, size), resize_image(planar, size))
