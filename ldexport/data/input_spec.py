"""The input contract of a detector: how an image file becomes the network's input.

One :class:`InputSpec` says everything a caller must do to an image before the model sees
it: the layout and dtype of the tensor, the channel order, the resize rule, the padding
and the normalisation. Export writes it into the ONNX metadata
(:mod:`ldexport.export.metadata`); every consumer (the ONNX Runtime and TensorRT runners,
INT8 calibration, parity inputs, ``eval``, ``predict``, ``bench``) reads it back and calls
:meth:`InputSpec.to_feed`. Training's validation pipeline applies the same rule: the
keep-ratio size is :func:`~ldexport.data.transforms.rescale_size` (mmdet's ``Resize``), the
pixels are resized by :func:`~ldexport.data.transforms.resize_image`, normalised by
:func:`~ldexport.data.transforms.normalize` and padded with 0 after normalising, as
mmdet's data preprocessor pads.

Two layouts exist:

- ``NCHW`` / ``float32`` / ``RGB``: the caller normalises (the plain graph, the PyTorch model);
- ``NHWC`` / ``uint8`` / ``BGR``: OpenCV's frames as they come; the graph normalises
  (``ldexport onnx --preprocess``). Padding is 0 bytes.

Two resize rules:

- ``keep_ratio``: mmdet's ``Resize(scale=(long, short), keep_ratio=True)``, the rule of
  training and of a dynamic graph: ``scale`` holds the two edge limits;
- ``letterbox``: fit inside a fixed ``H x W`` canvas (a static graph): ``scale`` is ``(H, W)``.

Images are padded at the bottom and right: to the fixed canvas of a static graph, else to
the batch's largest size rounded up to ``size_divisor`` (and at least ``min_size``).

Legend: ``N`` images, ``H x W`` the padded input, ``h x w`` one resized image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ldexport.data.image_io import read_image
from ldexport.data.pipeline import ImageMeta
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, rescale_size, resize_image
from ldexport.errors import LdexportError

Layout = Literal["NCHW", "NHWC"]
ResizeRule = Literal["keep_ratio", "letterbox"]

INPUT_NAME = "images"
"""The name of a graph's one input."""
SIZE_DIVISOR = 32
"""Every padded side is a multiple of it (mmdet's ``pad_size_divisor``)."""
MIN_SIZE = 64
"""The smallest padded side: the pyramid reaches stride 128, a side under 64 px leaves
nothing but single-cell maps from stride 32 on."""

_LAYOUTS: dict[str, tuple[str, str]] = {"NCHW": ("float32", "RGB"), "NHWC": ("uint8", "BGR")}


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input (see the module doc).

    Attributes:
        layout: ``NCHW`` (float32 normalised RGB) or ``NHWC`` (uint8 BGR bytes).
        dtype: ``float32`` with ``NCHW``, ``uint8`` with ``NHWC``.
        channel_order: ``RGB`` with ``NCHW``, ``BGR`` with ``NHWC``.
        resize: ``keep_ratio`` or ``letterbox``.
        scale: ``keep_ratio``: ``(long, short)`` edge limits; ``letterbox``: ``(H, W)``.
        size_divisor: padded sides are multiples of it.
        min_size: padded sides are at least this.
        fixed_size: ``(H, W)`` of a static input (every image padded to it), else ``None``.
        fixed_batch: the batch of a static input, else ``None``.
        mean, std: RGB normalisation, pixel scale 0-255 (applied by the caller for
            ``NCHW``, by the graph for ``NHWC``).
    """

    layout: Layout = "NCHW"
    dtype: str = "float32"
    channel_order: str = "RGB"
    resize: ResizeRule = "keep_ratio"
    scale: tuple[int, int] = (1333, 800)
    size_divisor: int = SIZE_DIVISOR
    min_size: int = MIN_SIZE
    fixed_size: tuple[int, int] | None = None
    fixed_batch: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if _LAYOUTS.get(self.layout) != (self.dtype, self.channel_order):
            known = "; ".join(f"{layout} {dtype} {order}" for layout, (dtype, order) in _LAYOUTS.items())
            raise LdexportError(f"input {self.layout} {self.dtype} {self.channel_order} is not supported ({known})")
        if self.resize not in ("keep_ratio", "letterbox"):
            raise LdexportError(f"unknown resize rule {self.resize!r} (keep_ratio, letterbox)")
        if len(self.scale) != 2 or min(self.scale) <= 0:
            raise LdexportError(f"resize scale must be two positive sizes, got {self.scale}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(value == 0 for value in self.std):
            raise LdexportError(f"mean and std must be 3 numbers each, std without zeros: {self.mean}, {self.std}")
        if self.fixed_size is not None and any(side % self.size_divisor for side in self.fixed_size):
            raise LdexportError(f"fixed input size {self.fixed_size} is not a multiple of {self.size_divisor}")

    @classmethod
    def for_graph(
        cls,
        *,
        preprocess: bool,
        dynamic: bool,
        size: tuple[int, int],
        batch: int,
        scale: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> InputSpec:
        """The spec of an exported graph.

        Args:
            preprocess: the graph takes uint8 BGR and normalises itself.
            dynamic: any batch and size; images resized by training's keep-ratio rule
                with ``scale``. Otherwise letterboxed into ``size``, ``batch`` a run.
            size: ``(H, W)`` of a static graph.
            batch: the batch of a static graph.
            scale: training's ``(long, short)`` edge limits.
            mean, std: the model's RGB normalisation.
        """
        layout: Layout = "NHWC" if preprocess else "NCHW"
        dtype, order = _LAYOUTS[layout]
        common = {"layout": layout, "dtype": dtype, "channel_order": order, "mean": _triple(mean), "std": _triple(std)}
        if dynamic:
            return cls(resize="keep_ratio", scale=(int(scale[0]), int(scale[1])), **common)  # type: ignore[arg-type]
        height, width = size
        return cls(
            resize="letterbox", scale=(height, width), fixed_size=(height, width), fixed_batch=batch, **common  # type: ignore[arg-type]
        )

    def with_fixed_size(self, height: int, width: int, batch: int) -> InputSpec:
        """The same contract for a fixed ``batch x height x width`` input (letterboxed into
        it): how a dynamic graph is fed at one shape (INT8 calibration at the opt shape)."""
        return dataclasses.replace(
            self, resize="letterbox", scale=(height, width), fixed_size=(height, width), fixed_batch=batch
        )

    @property
    def preprocess_in_graph(self) -> bool:
        """The model normalises the bytes itself (``NHWC`` uint8)."""
        return self.layout == "NHWC"

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an image of ``height x width`` after the resize rule."""
        if self.resize == "keep_ratio":
            new_width, new_height, _ = rescale_size(width, height, self.scale)
            return new_height, new_width
        canvas_height, canvas_width = self.scale
        factor = min(canvas_height / height, canvas_width / width)
        new_height = min(canvas_height, max(1, int(height * factor + 0.5)))
        new_width = min(canvas_width, max(1, int(width * factor + 0.5)))
        return new_height, new_width

    def padded_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """``(H, W)`` of the input holding images of ``sizes`` (resized)."""
        if self.fixed_size is not None:
            return self.fixed_size
        height = _padded_side(max(h for h, _ in sizes), self.size_divisor, self.min_size)
        width = _padded_side(max(w for _, w in sizes), self.size_divisor, self.min_size)
        return height, width

    def typical_input(self) -> tuple[int, int]:
        """``(H, W)`` of a typical input: a static input's size; under ``keep_ratio``, a
        landscape photograph's (:func:`typical_input_size`)."""
        return self.fixed_size if self.fixed_size is not None else typical_input_size(self.scale)

    def largest_input(self) -> tuple[int, int]:
        """``(H, W)`` covering every input this contract makes of one image: a static
        input's size; under ``keep_ratio``, the long edge limit padded, either way round
        (an image's long side may be its height or its width)."""
        if self.fixed_size is not None:
            return self.fixed_size
        side = _padded_side(max(self.scale), self.size_divisor, self.min_size)
        return side, side

    def to_feed(self, images: Tensor | Sequence[Tensor], paths: Sequence[str | Path] = ()) -> Feed:
        """Images as one input of the model.

        Args:
            images: ``[3, H_i, W_i]`` uint8 RGB each (as :func:`read_image` gives), or one.
            paths: the files they came from (kept in the metas), optional.

        Returns:
            The input and, per image, where its pixels went. A static batch is filled up
            by repeating the last image (the fill has no meta).

        Raises:
            LdexportError: more images than a static batch takes, or none.
        """
        images = [images] if isinstance(images, Tensor) else list(images)
        if not images:
            raise LdexportError("no images to feed")
        if self.fixed_batch is not None and len(images) > self.fixed_batch:
            raise LdexportError(f"the model takes batches of {self.fixed_batch} images, not {len(images)}")
        metas, resized = [], []
        for index, image in enumerate(images):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
                raise LdexportError(f"an image must be [3, H, W] uint8 RGB, got {tuple(image.shape)} {image.dtype}")
            height, width = int(image.shape[1]), int(image.shape[2])
            new_height, new_width = self.resized_size(height, width)
            resized.append(resize_image(image, (new_height, new_width)))
            path = str(paths[index]) if index < len(paths) else ""
            metas.append(
                ImageMeta(
                    image_id=index,
                    path=path,
                    original_size=(height, width),
                    image_size=(new_height, new_width),
                    scale_factor=(new_width / width, new_height / height),
                )
            )
        fill = (self.fixed_batch or len(images)) - len(images)
        canvas = self.padded_size([meta.image_size for meta in metas])
        return Feed(self._layout(resized + [resized[-1]] * fill, canvas), metas)

    def check_size(self, height: int, width: int, source: object, hint: str = "") -> None:
        """Refuses an input of ``height x width`` that a static contract does not take.

        Raises:
            LdexportError: naming ``source`` (the model), with ``hint`` appended.
        """
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            fixed_height, fixed_width = self.fixed_size
            raise LdexportError(f"{source} is static: it takes {fixed_height}x{fixed_width} only, not {height}x{width}{hint}")

    def random_feed(self, height: int, width: int, batch: int, generator: torch.Generator) -> Feed:
        """``batch`` images of uniform random bytes fed at exactly ``height x width`` (not
        resized: a dynamic contract takes them at a scale that keeps their size).

        Raises:
            LdexportError: another size than a static contract's own.
        """
        self.check_size(height, width, "the input")
        spec = self if self.fixed_size is not None else dataclasses.replace(self, scale=(max(height, width), min(height, width)))
        pixels = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator) for _ in range(batch)]
        return spec.to_feed(pixels)

    def read(self, paths: Sequence[str | Path]) -> Feed:
        """Reads image files (RGB) and makes one input of them (:meth:`to_feed`)."""
        return self.to_feed([read_image(Path(path)) for path in paths], paths)

    def _layout(self, images: Sequence[Tensor], canvas: tuple[int, int]) -> np.ndarray:
        """``[3, h, w]`` uint8 RGB images on one ``H x W`` canvas, laid out as the input."""
        height, width = canvas
        if self.preprocess_in_graph:
            # [N, H, W, 3] BGR bytes, padded with 0
            batch = torch.zeros((len(images), height, width, 3), dtype=torch.uint8)
            for out, image in zip(batch, images):
                out[: image.shape[1], : image.shape[2]] = image.flip(0).permute(1, 2, 0)
            return batch.numpy()
        # [N, 3, H, W] normalised RGB, padded with 0 after normalising (as mmdet)
        batch = torch.zeros((len(images), 3, height, width), dtype=torch.float32)
        for out, image in zip(batch, images):
            out[:, : image.shape[1], : image.shape[2]] = normalize(image, self.mean, self.std)
        return batch.numpy()

    def input_shape(self, height: int, width: int, batch: int) -> tuple[int, int, int, int]:
        """The input's shape for a ``batch`` of ``height x width``."""
        return (batch, height, width, 3) if self.preprocess_in_graph else (batch, 3, height, width)

    def to_json(self) -> dict[str, Any]:
        """As JSON-able data (the ``input_spec`` metadata value)."""
        return {
            "layout": self.layout,
            "dtype": self.dtype,
            "channel_order": self.channel_order,
            "resize": self.resize,
            "scale": list(self.scale),
            "size_divisor": self.size_divisor,
            "min_size": self.min_size,
            "fixed_size": None if self.fixed_size is None else list(self.fixed_size),
            "fixed_batch": self.fixed_batch,
            "mean": list(self.mean),
            "std": list(self.std),
            "pad": "bottom-right",
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any], source: str = "metadata") -> InputSpec:
        """Parses :meth:`to_json`'s data.

        Raises:
            LdexportError: a missing or malformed field.
        """
        try:
            fixed = value.get("fixed_size")
            return cls(
                layout=value["layout"],
                dtype=value["dtype"],
                channel_order=value["channel_order"],
                resize=value["resize"],
                scale=(int(value["scale"][0]), int(value["scale"][1])),
                size_divisor=int(value["size_divisor"]),
                min_size=int(value["min_size"]),
                fixed_size=None if fixed is None else (int(fixed[0]), int(fixed[1])),
                fixed_batch=None if value.get("fixed_batch") is None else int(value["fixed_batch"]),
                mean=_triple(value["mean"]),
                std=_triple(value["std"]),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise LdexportError(f"{source}: malformed input spec ({type(error).__name__}: {error})") from None


@dataclass
class Feed:
    """One input of the model and where each image's pixels went.

    Attributes:
        images: ``[N, 3, H, W]`` float32 or ``[N, H, W, 3]`` uint8, as the spec lays it out.
        metas: one per real image (a static batch's fill has none): original size,
            resized size, scale factor (:func:`~ldexport.data.pipeline.boxes_to_original`
            maps boxes back to the file's pixels).
    """

    images: np.ndarray
    metas: list[ImageMeta] = field(default_factory=list)

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The feed dict of a graph (its one input is ``images``)."""
        return {INPUT_NAME: self.images}

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """``(h, w)`` of each real image inside the input."""
        return [meta.image_size for meta in self.metas]


def typical_input_size(scale: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of a landscape photograph resized to the keep-ratio limits ``scale``
    (long, short) and padded: the size a dynamic graph is traced at and TensorRT tuned for
    unless told (800x1344 for mmdet's ``(1333, 800)``, mmdeploy's opt shape for GFL)."""
    return _padded_side(min(scale)), _padded_side(max(scale))


def _padded_side(side: int, divisor: int = SIZE_DIVISOR, minimum: int = MIN_SIZE) -> int:
    """A side rounded up to a multiple of ``divisor``, at least ``minimum``."""
    return max(minimum, -(-side // divisor) * divisor)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise LdexportError(f"expected 3 numbers, got {list(values)}")
    return float(values[0]), float(values[1]), float(values[2])
