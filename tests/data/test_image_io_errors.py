"""Image decoding as OpenCV's IMREAD_COLOR gives mmdet, and images PIL refuses, named in one line."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import write_image
from PIL import Image

from ldexport.data.image_io import read_image, read_image_size
from ldexport.data.yolo import load_yolo
from ldexport.errors import LdexportError


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A grey PNG whose header claims ``width`` x ``height``, with a few bytes of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_decompression_bomb_is_named_with_its_pixel_count(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "images/bomb.png", 30000, 30000)  # over PIL's 179M-pixel limit
    for read, what in ((read_image_size, "cannot read image header"), (read_image, "cannot read image")):
        with pytest.raises(LdexportError) as error:
            read(bomb)
        message = str(error.value)
        assert message.startswith(f"{bomb}: {what} (") and "900000000 pixels" in message and "\n" not in message
    # The YOLO loader reads every header when it loads.
    (tmp_path / "labels").mkdir()
    (tmp_path / "classes.txt").write_text("cat\n")
    with pytest.raises(LdexportError, match=re.escape(f"{bomb}: cannot read image header")):
        load_yolo(tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_keeps_the_high_byte(tmp_path: Path, suffix: str) -> None:
    # [H, W] over the whole 16-bit range; PIL's convert("RGB") would make it all 255
    grey = np.arange(0, 65536, 11, dtype=np.uint16)[: 60 * 90].reshape(60, 90)
    path = tmp_path / f"g16{suffix}"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image(path)
    expected = torch.from_numpy((grey >> 8).astype(np.uint8)).expand(3, -1, -1)
    assert image.dtype == torch.uint8 and image.is_contiguous() and torch.equal(image, expected)
    assert torch.equal(read_image(path, channels_last=True), expected)


def test_16_bit_grey_matches_opencv(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "g16.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (40, 50), dtype=np.uint16)).save(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # mmdet's decoding
    assert torch.equal(read_image(path), torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "1", "CMYK"])
def test_8_bit_modes_decode_as_pil_converts_them(tmp_path: Path, mode: str) -> None:
    source = Image.open(write_image(tmp_path / "rgb.png", 37, 23)).convert(mode)
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    source.save(path)
    with Image.open(path) as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read_image(path), expected)
