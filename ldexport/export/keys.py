"""The ONNX ``metadata_props`` keys of an ldexport graph: their one owner.

Every value is a string; lists, numbers and mappings are JSON.

| key | value |
| --- | --- |
| ``ldexport_format`` | ``gfl-detector``: marks the file as ldexport's |
| ``ldexport_format_version`` | :data:`FORMAT_VERSION` |
| ``ldexport_version`` | the ldexport that exported it |
| ``checkpoint_sha256`` | SHA-256 of the checkpoint file's bytes |
| ``weights_sha256`` | SHA-256 of the weights themselves (:func:`~ldexport.interop.checkpoint.weights_sha256`): the same for every file holding them |
| ``model_config`` | the ``ModelConfig`` the detector was built with |
| ``class_names`` | list of ``C`` names, label order |
| ``strides``, ``reg_max``, ``octave_base_scale`` | the head's geometry |
| ``input_spec`` | the :class:`~ldexport.data.input_spec.InputSpec`: layout, dtype, channel order, resize rule and scale, padding, fixed size and batch, mean/std |
| ``input_layout``, ``input_dtype``, ``channel_order``, ``mean``, ``std`` | the same facts as flat keys, for readers that are not ldexport |
| ``outputs`` | ``dense`` (``boxes``, ``scores``) or ``detections`` |
| ``nms`` | ``none``, ``onnx`` or ``efficient`` |
| ``score_thr``, ``iou_threshold``, ``nms_pre``, ``max_det``, ``min_bbox_size`` | the decoding settings (``TestConfig``) |
| ``dynamic`` | ``true`` when batch, height and width are dynamic |
| ``input_min_shape``, ``input_opt_shape``, ``input_max_shape`` | TensorRT profile, ``{"images": [N, C, H, W]}`` |
| ``quantization`` | only in an INT8 Q/DQ graph: its settings and calibration set (:mod:`ldexport.quantize`) |
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

FORMAT_KEY = "ldexport_format"
FORMAT = "gfl-detector"
FORMAT_VERSION_KEY = "ldexport_format_version"
FORMAT_VERSION = "2"  # 2: the input contract (``input_spec``) is recorded
VERSION_KEY = "ldexport_version"
CHECKPOINT_SHA256_KEY = "checkpoint_sha256"
WEIGHTS_SHA256_KEY = "weights_sha256"
MODEL_CONFIG_KEY = "model_config"
CLASS_NAMES_KEY = "class_names"
INPUT_SPEC_KEY = "input_spec"
INPUT_LAYOUT_KEY = "input_layout"
INPUT_DTYPE_KEY = "input_dtype"
CHANNEL_ORDER_KEY = "channel_order"
MEAN_KEY = "mean"
STD_KEY = "std"
OUTPUTS_KEY = "outputs"
NMS_KEY = "nms"
DYNAMIC_KEY = "dynamic"
MIN_SHAPE_KEY = "input_min_shape"
OPT_SHAPE_KEY = "input_opt_shape"
MAX_SHAPE_KEY = "input_max_shape"
PROFILE_KEYS = (MIN_SHAPE_KEY, OPT_SHAPE_KEY, MAX_SHAPE_KEY)
QUANTIZATION_KEY = "quantization"


def profile_metadata(profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> dict[str, str]:
    """The TensorRT profile entries: per bound, a JSON object from input name to shape::

        input_opt_shape = {"images": [1, 3, 640, 640]}

    Args:
        profile: input name -> ``(min, opt, max)`` shapes.
    """
    return {
        key: json.dumps({name: [int(size) for size in ranges[index]] for name, ranges in profile.items()})
        for index, key in enumerate(PROFILE_KEYS)
    }
