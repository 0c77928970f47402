"""Shapes from the command line and from ONNX metadata (the exporter's contract)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import helper

from ldexport.errors import LdexportError
from ldexport.trt.profile import (
    PROFILE_KEYS,
    format_shape,
    parse_shape,
    parse_shape_arg,
    profile_from_args,
    profile_from_metadata,
    profile_metadata,
    resolve_profile,
)

from trt_tiny_model import PROFILE


def test_parse_and_format_shapes() -> None:
    assert parse_shape("1x3x640x640") == (1, 3, 640, 640)
    assert format_shape((1, 3, 640, 640)) == "1x3x640x640"
    assert parse_shape_arg("images:2x3x32x32") == ("images", (2, 3, 32, 32))
    assert parse_shape_arg("2x3x32x32") == (None, (2, 3, 32, 32))
    for bad in ["", "1x3x", "1x0x2", "ax3"]:
        with pytest.raises(LdexportError):
            parse_shape(bad)


def test_metadata_round_trip(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    assert set(PROFILE_KEYS) == {"input_min_shape", "input_opt_shape", "input_max_shape"}
    assert profile_from_metadata(model) == PROFILE
    assert profile_metadata(PROFILE)["input_opt_shape"] == '{"images": [1, 3, 64, 64]}'


def test_bare_metadata_shape_for_a_single_input(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    helper.set_model_props(
        model,
        {"input_min_shape": "1x3x32x32", "input_opt_shape": "[1, 3, 64, 64]", "input_max_shape": "1x3x96x96"},
    )
    assert profile_from_metadata(model) == {"images": ((1, 3, 32, 32), (1, 3, 64, 64), (1, 3, 96, 96))}


def test_args_then_metadata_then_error(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    given = profile_from_args(model, ["1x3x32x32"], ["1x3x48x48"], ["1x3x64x64"])
    assert given == {"images": ((1, 3, 32, 32), (1, 3, 48, 48), (1, 3, 64, 64))}
    assert resolve_profile(model, given) == given
    assert resolve_profile(model, None) == PROFILE
    del model.metadata_props[:]
    with pytest.raises(LdexportError, match="'images' has dynamic shape \\?x3x\\?x\\? and no profile"):
        resolve_profile(model, None)
    assert profile_from_args(model, [], [], []) is None
