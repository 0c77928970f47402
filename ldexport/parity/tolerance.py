"""What an exported model must meet against the reference, by precision.

An fp32 graph computes what PyTorch computes up to rounding: every dense element within
``atol``, every detection matched (same label, IoU >= 0.99) both ways, matched pairs
within the same tolerances.

An int8 graph (Q/DQ, :mod:`ldexport.quantize`) differs by its quantization noise, which
no element-wise bound of useful size covers: a score near the threshold or a box near the
NMS overlap flips. It is judged by statistics instead (the numbers chosen by measuring
the demo's students, ``scripts/bench_int8.py``; docs/benchmarks.md, "INT8"):

- dense ``scores``: the 99th percentile and the mean of the absolute error;
- detections: matched at IoU >= :data:`INT8_MATCH_IOU` (same label), and over all the
  cases of a runner at least :data:`INT8_MIN_MATCHED` of the reference's detections
  found and of the candidate's detections known to the reference;
- matched pairs: their mean IoU (a scale-free box error) and their mean score error.

Dense ``boxes`` statistics are reported but not judged for int8: most of the ``A`` boxes
belong to background anchors whose distributions are flat, and their expectation moves
by pixels under int8 noise without changing any detection.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from ldexport.errors import LdexportError

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")

INT8_MATCH_IOU = 0.5
INT8_MIN_MATCHED = 0.85
INT8_SCORE_P99 = 0.05
INT8_SCORE_MEAN = 0.01
INT8_PAIR_IOU_MEAN = 0.9
INT8_PAIR_SCORE_MEAN = 0.02


@dataclass(frozen=True)
class ParityTolerance:
    """The tolerances of one precision.

    Attributes:
        precision: ``fp32`` or ``int8``.
        box_atol, score_atol: element-wise bounds (fp32): dense outputs and matched pairs.
        match_iou: the overlap a detection pair needs.
        min_matched: share of detections matched both ways, over a runner's cases.
        score_p99, score_mean: int8: bounds on the dense scores' p99 and mean abs error.
        pair_iou_mean, pair_score_mean: int8: the matched pairs' least mean IoU and
            largest mean score error.
    """

    precision: Precision
    box_atol: float
    score_atol: float
    match_iou: float
    min_matched: float
    score_p99: float | None = None
    score_mean: float | None = None
    pair_iou_mean: float | None = None
    pair_score_mean: float | None = None

    @property
    def element_wise(self) -> bool:
        """Dense outputs and matched pairs bounded element by element (fp32)."""
        return self.precision == "fp32"

    def to_json(self) -> dict:
        """As JSON-able data (written into the parity report)."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def fp32_tolerance(box_atol: float, score_atol: float) -> ParityTolerance:
    """Float parity: element-wise ``box_atol``/``score_atol``, every detection matched at
    IoU >= 0.99 both ways.

    Raises:
        LdexportError: a tolerance that is negative or not finite (nothing could meet it,
            or everything would).
    """
    from ldexport.parity.detections import MATCH_IOU

    check_tolerance("--box-atol", box_atol)
    check_tolerance("--score-atol", score_atol)

    return ParityTolerance("fp32", box_atol=box_atol, score_atol=score_atol, match_iou=MATCH_IOU, min_matched=1.0)


def check_tolerance(name: str, value: float) -> None:
    """Refuses a tolerance that is negative, NaN or infinite.

    Raises:
        LdexportError: naming the option ``name``.
    """
    if not math.isfinite(value) or value < 0:
        raise LdexportError(f"{name} must be a finite number >= 0, got {value:g}")


def int8_tolerance() -> ParityTolerance:
    """INT8 parity (see the module doc)."""
    return ParityTolerance(
        "int8",
        box_atol=float("inf"),
        score_atol=float("inf"),
        match_iou=INT8_MATCH_IOU,
        min_matched=INT8_MIN_MATCHED,
        score_p99=INT8_SCORE_P99,
        score_mean=INT8_SCORE_MEAN,
        pair_iou_mean=INT8_PAIR_IOU_MEAN,
        pair_score_mean=INT8_PAIR_SCORE_MEAN,
    )
