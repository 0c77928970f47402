"""What an exported graph says about itself, in the ONNX ``metadata_props``.

Every value is a string; lists, numbers and mappings are JSON. Keys:

| key | value |
| --- | --- |
| ``ldexport_format`` | ``gfl-detector``: marks the file as ldexport's |
| ``ldexport_format_version`` | ``1`` |
| ``ldexport_version`` | the ldexport that exported it |
| ``checkpoint_sha256`` | SHA-256 of the checkpoint file's bytes |
| ``model_config`` | the :class:`ModelConfig` the detector was built with |
| ``class_names`` | list of ``C`` names, label order |
| ``strides``, ``reg_max``, ``octave_base_scale`` | the head's geometry |
| ``input_layout`` | ``NCHW`` (float32, normalised RGB) or ``NHWC`` (uint8 BGR) |
| ``input_dtype``, ``channel_order`` | ``float32``/``uint8``, ``RGB``/``BGR`` |
| ``mean``, ``std`` | RGB normalisation, pixel scale 0-255 (applied by the caller for NCHW, by the graph for NHWC) |
| ``resize`` | ``{"keep_ratio": true, "pad": "bottom-right", "size_divisor": 32}`` |
| ``outputs`` | ``dense`` (``boxes``, ``scores``) or ``detections`` |
| ``nms`` | ``none``, ``onnx`` or ``efficient`` |
| ``score_thr``, ``iou_threshold``, ``nms_pre``, ``max_det``, ``min_bbox_size`` | the decoding settings (:class:`TestConfig`) |
| ``dynamic`` | ``true`` when batch, height and width are dynamic |
| ``input_min_shape``, ``input_opt_shape``, ``input_max_shape`` | TensorRT profile, ``{"images": [N, C, H, W]}`` (:mod:`ldexport.trt.profile`) |
| ``quantization`` | only in an INT8 Q/DQ graph: its settings and calibration set (:mod:`ldexport.quantize`) |

``mean``/``std`` and the profile keys are the ones :mod:`ldexport.trt` reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ldexport import __version__
from ldexport.errors import LdexportError
from ldexport.export.options import ExportOptions, NmsKind
from ldexport.model.build import ModelConfig
from ldexport.model.detector import TestConfig
from ldexport.trt.preprocess import MEAN_KEY, STD_KEY
from ldexport.trt.profile import MAX_SHAPE_KEY, MIN_SHAPE_KEY, OPT_SHAPE_KEY, profile_metadata

FORMAT_KEY = "ldexport_format"
FORMAT = "gfl-detector"
FORMAT_VERSION_KEY = "ldexport_format_version"
FORMAT_VERSION = "1"
INPUT_NAME = "images"
QUANTIZATION_KEY = "quantization"
RESIZE = {"keep_ratio": True, "pad": "bottom-right", "size_divisor": 32}


@dataclass(frozen=True)
class ExportInfo:
    """An ldexport graph's metadata, parsed.

    Attributes:
        ldexport_version, checkpoint_sha256: provenance.
        model_config: the detector's architecture.
        class_names: ``C`` names in label order.
        preprocess: the graph takes uint8 BGR ``[N, H, W, 3]`` (else float ``[N, 3, H, W]``).
        mean, std: RGB normalisation.
        nms: ``none``, ``onnx`` or ``efficient``.
        test_cfg: the decoding settings the graph was exported with.
        dynamic: batch, height and width dynamic.
        min_shape, opt_shape, max_shape: the TensorRT profile of ``images``.
    """

    ldexport_version: str
    checkpoint_sha256: str
    model_config: ModelConfig
    class_names: tuple[str, ...]
    preprocess: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    nms: NmsKind
    test_cfg: TestConfig
    dynamic: bool
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the export (the profile's ``opt``)."""
        shape = self.opt_shape
        return (shape[1], shape[2]) if self.preprocess else (shape[2], shape[3])


def export_metadata(
    *,
    options: ExportOptions,
    model_config: ModelConfig,
    test_cfg: TestConfig,
    class_names: Sequence[str],
    checkpoint_sha256: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph (see the module's table)."""
    low, opt, high = options.profile()
    values: dict[str, Any] = {
        FORMAT_KEY: FORMAT,
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        "ldexport_version": __version__,
        "checkpoint_sha256": checkpoint_sha256,
        "model_config": asdict(model_config),
        "class_names": list(class_names),
        "strides": list(model_config.strides),
        "reg_max": model_config.reg_max,
        "octave_base_scale": model_config.octave_base_scale,
        "input_layout": "NHWC" if options.preprocess else "NCHW",
        "input_dtype": "uint8" if options.preprocess else "float32",
        "channel_order": "BGR" if options.preprocess else "RGB",
        MEAN_KEY: list(mean),
        STD_KEY: list(std),
        "resize": RESIZE,
        "outputs": "dense" if options.nms == "none" else "detections",
        "nms": options.nms,
        "score_thr": test_cfg.score_thr,
        "iou_threshold": test_cfg.iou_threshold,
        "nms_pre": test_cfg.nms_pre,
        "max_det": test_cfg.max_per_img,
        "min_bbox_size": test_cfg.min_bbox_size,
        "dynamic": options.dynamic,
    }
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
    props.update(profile_metadata({INPUT_NAME: (low, opt, high)}))
    return props


def read_export_info(props: Mapping[str, str], source: str) -> ExportInfo:
    """Parses an ldexport graph's ``metadata_props``.

    Args:
        props: key -> value.
        source: the file, for messages.

    Raises:
        LdexportError: the graph is not ldexport's, or its metadata is malformed.
    """
    if props.get(FORMAT_KEY) != FORMAT:
        raise LdexportError(f"{source} is not an ldexport detector graph (no {FORMAT_KEY}={FORMAT} metadata)")
    if props.get(FORMAT_VERSION_KEY) != FORMAT_VERSION:
        raise LdexportError(
            f"{source} has ldexport graph format {props.get(FORMAT_VERSION_KEY)!r}; this ldexport reads {FORMAT_VERSION}"
        )
    try:
        config = json.loads(props["model_config"])
        config["strides"] = tuple(config["strides"])
        profile = [json.loads(props[key])[INPUT_NAME] for key in (MIN_SHAPE_KEY, OPT_SHAPE_KEY, MAX_SHAPE_KEY)]
        return ExportInfo(
            ldexport_version=props["ldexport_version"],
            checkpoint_sha256=props["checkpoint_sha256"],
            model_config=ModelConfig(**config),
            class_names=tuple(json.loads(props["class_names"])),
            preprocess=props["input_layout"] == "NHWC",
            mean=tuple(json.loads(props[MEAN_KEY])),
            std=tuple(json.loads(props[STD_KEY])),
            nms=props["nms"],  # type: ignore[arg-type]
            test_cfg=TestConfig(
                nms_pre=int(props["nms_pre"]),
                score_thr=float(props["score_thr"]),
                iou_threshold=float(props["iou_threshold"]),
                max_per_img=int(props["max_det"]),
                min_bbox_size=float(props["min_bbox_size"]),
            ),
            dynamic=json.loads(props["dynamic"]),
            min_shape=tuple(profile[0]),
            opt_shape=tuple(profile[1]),
            max_shape=tuple(profile[2]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise LdexportError(f"{source} has malformed ldexport metadata ({type(error).__name__}: {error})") from None


def read_onnx_info(path: str | Path) -> ExportInfo:
    """Reads the metadata of an ONNX file without loading its weights.

    Raises:
        LdexportError: the file is missing, not ONNX, or not an ldexport graph.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise LdexportError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None
    return read_export_info({prop.key: prop.value for prop in model.metadata_props}, str(path))
