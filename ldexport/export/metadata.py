"""What an exported graph says about itself, in the ONNX ``metadata_props``.

The keys and their values are listed in :mod:`ldexport.export.keys`, their one owner.
:func:`export_metadata` writes them; :func:`read_onnx_info` reads them back (and refuses a
file that is not ldexport's); :func:`read_input_spec` reads only the input contract, for
consumers that need nothing else (INT8 calibration).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ldexport import __version__
from ldexport.errors import LdexportError
from ldexport.data.input_spec import INPUT_NAME, InputSpec
from ldexport.export.keys import (
    CHANNEL_ORDER_KEY,
    CHECKPOINT_SHA256_KEY,
    WEIGHTS_SHA256_KEY,
    CLASS_NAMES_KEY,
    DYNAMIC_KEY,
    FORMAT,
    FORMAT_KEY,
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    INPUT_DTYPE_KEY,
    INPUT_LAYOUT_KEY,
    INPUT_SPEC_KEY,
    MEAN_KEY,
    MODEL_CONFIG_KEY,
    NMS_KEY,
    OUTPUTS_KEY,
    PROFILE_KEYS,
    profile_metadata,
    STD_KEY,
    VERSION_KEY,
)
from ldexport.export.options import ExportOptions, NmsKind
from ldexport.model.build import ModelConfig
from ldexport.model.detector import TestConfig


@dataclass(frozen=True)
class ExportInfo:
    """An ldexport graph's metadata, parsed.

    Attributes:
        ldexport_version, checkpoint_sha256: provenance.
        model_config: the detector's architecture.
        class_names: ``C`` names in label order.
        input_spec: the input contract (layout, resize rule, padding, mean/std).
        nms: ``none``, ``onnx`` or ``efficient``.
        test_cfg: the decoding settings the graph was exported with.
        dynamic: batch, height and width dynamic.
        min_shape, opt_shape, max_shape: the TensorRT profile of ``images``.
        weights_sha256: SHA-256 of the weights (``None`` in graphs exported before it
            was recorded).
    """

    ldexport_version: str
    checkpoint_sha256: str
    model_config: ModelConfig
    class_names: tuple[str, ...]
    input_spec: InputSpec
    nms: NmsKind
    test_cfg: TestConfig
    dynamic: bool
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    weights_sha256: str | None = None

    @property
    def preprocess(self) -> bool:
        """The graph takes uint8 BGR ``[N, H, W, 3]`` and normalises it itself."""
        return self.input_spec.preprocess_in_graph

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB mean, pixel scale 0-255."""
        return self.input_spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB standard deviation, pixel scale 0-255."""
        return self.input_spec.std

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the export (the profile's ``opt``)."""
        shape = self.opt_shape
        return (shape[1], shape[2]) if self.preprocess else (shape[2], shape[3])

    @property
    def detections(self) -> bool:
        """The graph ends in NMS (``num_dets``, ``det_*``) rather than dense outputs."""
        return self.nms != "none"


def export_metadata(
    *,
    options: ExportOptions,
    model_config: ModelConfig,
    test_cfg: TestConfig,
    class_names: Sequence[str],
    checkpoint_sha256: str,
    input_spec: InputSpec,
    weights_sha256: str | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph (see :mod:`ldexport.export.keys`)."""
    low, opt, high = options.profile(input_spec.largest_input())
    values: dict[str, Any] = {
        FORMAT_KEY: FORMAT,
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        VERSION_KEY: __version__,
        CHECKPOINT_SHA256_KEY: checkpoint_sha256,
        **({WEIGHTS_SHA256_KEY: weights_sha256} if weights_sha256 is not None else {}),
        # the ImageNet file is a training input: the graph holds every weight
        MODEL_CONFIG_KEY: asdict(replace(model_config, pretrained=None)),
        CLASS_NAMES_KEY: list(class_names),
        "strides": list(model_config.strides),
        "reg_max": model_config.reg_max,
        "octave_base_scale": model_config.octave_base_scale,
        INPUT_SPEC_KEY: input_spec.to_json(),
        INPUT_LAYOUT_KEY: input_spec.layout,
        INPUT_DTYPE_KEY: input_spec.dtype,
        CHANNEL_ORDER_KEY: input_spec.channel_order,
        MEAN_KEY: list(input_spec.mean),
        STD_KEY: list(input_spec.std),
        OUTPUTS_KEY: "dense" if options.nms == "none" else "detections",
        NMS_KEY: options.nms,
        "score_thr": test_cfg.score_thr,
        "iou_threshold": test_cfg.iou_threshold,
        "nms_pre": test_cfg.nms_pre,
        "max_det": test_cfg.max_per_img,
        "min_bbox_size": test_cfg.min_bbox_size,
        DYNAMIC_KEY: options.dynamic,
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
        config = json.loads(props[MODEL_CONFIG_KEY])
        config["strides"] = tuple(config["strides"])
        profile = [json.loads(props[key])[INPUT_NAME] for key in PROFILE_KEYS]
        return ExportInfo(
            ldexport_version=props[VERSION_KEY],
            checkpoint_sha256=props[CHECKPOINT_SHA256_KEY],
            model_config=ModelConfig(**config),
            class_names=tuple(json.loads(props[CLASS_NAMES_KEY])),
            input_spec=read_input_spec(props, source),
            nms=props[NMS_KEY],  # type: ignore[arg-type]
            test_cfg=TestConfig(
                nms_pre=int(props["nms_pre"]),
                score_thr=float(props["score_thr"]),
                iou_threshold=float(props["iou_threshold"]),
                max_per_img=int(props["max_det"]),
                min_bbox_size=float(props["min_bbox_size"]),
            ),
            dynamic=json.loads(props[DYNAMIC_KEY]),
            min_shape=tuple(profile[0]),
            opt_shape=tuple(profile[1]),
            max_shape=tuple(profile[2]),
            weights_sha256=props.get(WEIGHTS_SHA256_KEY),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise LdexportError(f"{source} has malformed ldexport metadata ({type(error).__name__}: {error})") from None


def read_input_spec(props: Mapping[str, str], source: str) -> InputSpec:
    """The input contract recorded in a graph's ``metadata_props``.

    Raises:
        LdexportError: the graph carries none (exported by another tool, or by an older
            ldexport), or a malformed one.
    """
    if INPUT_SPEC_KEY not in props:
        raise LdexportError(
            f"{source} does not record its input contract ({INPUT_SPEC_KEY} metadata): re-export it with `ldexport onnx`"
        )
    try:
        value = json.loads(props[INPUT_SPEC_KEY])
    except json.JSONDecodeError:
        raise LdexportError(f"{source}: metadata {INPUT_SPEC_KEY} is not JSON") from None
    if not isinstance(value, dict):
        raise LdexportError(f"{source}: metadata {INPUT_SPEC_KEY} is not a JSON object")
    return InputSpec.from_json(value, source)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, without loading its weights.

    Raises:
        LdexportError: the file is missing or not ONNX.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise LdexportError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
        raise LdexportError(f"{path} is not a readable ONNX model ({type(error).__name__})") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def read_onnx_info(path: str | Path) -> ExportInfo:
    """Reads the metadata of an ONNX file without loading its weights.

    Raises:
        LdexportError: the file is missing, not ONNX, or not an ldexport graph.
    """
    return read_export_info(onnx_metadata(path), str(path))


def check_exported_from(
    exported: str | Path,
    recorded: tuple[str, str | None],
    checkpoint: str | Path,
    loaded: tuple[str, Callable[[], str]],
) -> None:
    """Refuses to compare an exported model with other weights than its own.

    Args:
        exported, checkpoint: the files, for the message.
        recorded: the SHA-256 of the checkpoint file and of its weights recorded at export
            (the weights' ``None`` in older graphs).
        loaded: the checkpoint file's SHA-256, and how to hash its weights (called only
            where the files differ: another file of the same weights passes).

    Raises:
        LdexportError: other weights (or, in an older graph, another file).
    """
    recorded_file, recorded_weights = recorded
    loaded_file, loaded_weights = loaded
    if recorded_file == loaded_file or (recorded_weights is not None and recorded_weights == loaded_weights()):
        return
    if recorded_weights is None:
        raise LdexportError(
            f"{exported} was exported from another checkpoint file than {checkpoint} (the file's sha256 differs; "
            "this graph records no hash of its weights: give the file it was exported from, or re-export it)"
        )
    raise LdexportError(f"{exported} was exported from other weights than those of {checkpoint}")
