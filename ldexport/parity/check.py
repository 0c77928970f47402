"""``check_parity``: runs a reference and candidate runners on every case and compares them.

The reference is any :class:`~ldexport.parity.base.Runner`: the PyTorch student (its
detections are ``predict``'s own), or an exported model (ONNX Runtime as the reference of
a TensorRT engine, say; its detections are made from its outputs as ``predict`` would).
A case passes for a runner when

- dense graphs: ``boxes`` and ``scores`` are within tolerance element by element, and the
  detections ``predict``'s post-processing makes of the runner's dense outputs match
  ``predict``'s own, both ways;
- graphs with NMS: ``num_dets`` agree and the detections match both ways, the matched
  pairs within the box and score tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ldexport.export.nms import DETECTION_OUTPUTS
from ldexport.model.detector import Detections, TestConfig
from ldexport.parity.base import Runner
from ldexport.parity.compare import ErrorStats, Tolerance, compare_arrays, compare_outputs
from ldexport.parity.detections import DetectionMatch, graph_detections, match_detections
from ldexport.parity.inputs import Case
from ldexport.parity.runners import TorchRunner

DEFAULT_BOX_ATOL = 1e-3
DEFAULT_SCORE_ATOL = 1e-5
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def default_box_atol(reg_max: int, strides: Sequence[int]) -> float:
    """The fp32 tolerance on box coordinates for a head with ``reg_max`` and ``strides``.

    A distance is the expectation over ``reg_max + 1`` bins (at most ``reg_max``) times
    the stride. Two fp32 implementations of the softmax and the sum (PyTorch's, the
    graph's) may each be off by about ``(reg_max + 1) * u * reg_max`` bins (``u`` the unit
    roundoff, ``2**-24``), so at the largest stride the boxes can differ by twice that
    times the stride: 4.2e-3 px for ``reg_max`` 16 and stride 128. Never below
    :data:`DEFAULT_BOX_ATOL`.
    """
    rounding = 2 * (reg_max + 1) * _FLOAT32_UNIT_ROUNDOFF * reg_max * max(strides)
    return max(DEFAULT_BOX_ATOL, rounding)


@dataclass
class RunnerResult:
    """One runner on one case, against the reference.

    Attributes:
        runner: the runner's name.
        outputs: per-output error statistics.
        detections: the detection-level match.
        box_atol, score_atol: tolerances of matched detections.
    """

    runner: str
    outputs: list[ErrorStats]
    detections: DetectionMatch
    box_atol: float
    score_atol: float

    @property
    def detections_passed(self) -> bool:
        """All detections matched both ways, matched pairs within tolerance."""
        found = self.detections
        return found.passed and found.max_box_error <= self.box_atol and found.max_score_error <= self.score_atol

    @property
    def passed(self) -> bool:
        """Every output and the detections passed."""
        return all(stats.passed for stats in self.outputs) and self.detections_passed

    def to_json(self) -> dict:
        """As JSON-able data."""
        return {
            "runner": self.runner,
            "passed": self.passed,
            "outputs": [stats.to_json() for stats in self.outputs],
            "detections": {**self.detections.to_json(), "passed": self.detections_passed},
        }


@dataclass
class CaseResult:
    """Every runner on one input."""

    case: str
    shape: tuple[int, ...]
    results: list[RunnerResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every runner passed."""
        return all(result.passed for result in self.results)


@dataclass
class ParityReport:
    """The whole comparison."""

    reference: str
    runners: list[str]
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        """Every case passed (and there was at least one)."""
        return bool(self.cases) and all(case.passed for case in self.cases)

    def to_json(self) -> dict:
        """As JSON-able data."""
        return {
            "passed": self.passed,
            "reference": self.reference,
            "runners": self.runners,
            "cases": [
                {
                    "case": case.case,
                    "shape": list(case.shape),
                    "passed": case.passed,
                    "results": [result.to_json() for result in case.results],
                }
                for case in self.cases
            ],
        }


def check_parity(
    reference: Runner,
    runners: Sequence[Runner],
    cases: Sequence[Case],
    *,
    strides: Sequence[int],
    test_cfg: TestConfig,
    detections: bool,
    box_atol: float = DEFAULT_BOX_ATOL,
    score_atol: float = DEFAULT_SCORE_ATOL,
) -> ParityReport:
    """Runs every case through the reference and each runner, and compares.

    Args:
        reference: any runner; a :class:`TorchRunner` gives ``predict``'s own detections.
        runners: the runners checked against it.
        cases: the inputs.
        strides, test_cfg: the head's strides and the decoding settings (to make
            detections of dense outputs).
        detections: the graphs end in NMS (``num_dets``, ``det_*``), else dense outputs.
        box_atol: tolerance on box coordinates, pixels.
        score_atol: tolerance on scores.
    """
    report = ParityReport(reference.name, [runner.name for runner in runners], [])
    for case in cases:
        input_size = _input_size(case)
        if isinstance(reference, TorchRunner):
            run = reference.run(case.feeds)
            expected_outputs, expected = run.outputs, run.detections
        else:
            expected_outputs = reference.infer(case.feeds)
            expected = graph_detections(expected_outputs, input_size=input_size, strides=strides, test_cfg=test_cfg)
        result = CaseResult(case.name, tuple(int(size) for size in case.images.shape))
        for runner in runners:
            outputs = runner.infer(case.feeds)
            stats = _compare(expected_outputs, outputs, detections, box_atol, score_atol)
            found = _usable_detections(expected_outputs, outputs, detections, input_size, strides, test_cfg)
            match = _no_match(expected) if found is None else match_detections(expected, found)
            result.results.append(RunnerResult(runner.name, stats, match, box_atol, score_atol))
        report.cases.append(result)
    return report


def _input_size(case: Case) -> tuple[int, int]:
    """``(H, W)`` of a case's input, NCHW float or NHWC bytes."""
    shape = case.images.shape
    return (int(shape[1]), int(shape[2])) if case.images.dtype == np.uint8 else (int(shape[2]), int(shape[3]))


def _compare(
    expected: dict[str, np.ndarray], outputs: dict[str, np.ndarray], detections: bool, box_atol: float, score_atol: float
) -> list[ErrorStats]:
    """Per-output statistics: ``num_dets`` exactly after NMS, else boxes and scores."""
    if detections:
        return [compare_arrays("num_dets", _as_int(expected, "num_dets"), _as_int(outputs, "num_dets"), Tolerance(0.0))]
    return compare_outputs(expected, outputs, {"boxes": Tolerance(box_atol), "scores": Tolerance(score_atol)})


def _usable_detections(
    expected: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    detections: bool,
    input_size: tuple[int, int],
    strides: Sequence[int],
    test_cfg: TestConfig,
) -> list[Detections] | None:
    """The runner's detections, or ``None`` when its outputs are missing or misshapen."""
    names = DETECTION_OUTPUTS if detections else ("boxes", "scores")
    if not set(names) <= set(outputs):
        return None
    if not detections and any(outputs[name].shape != expected[name].shape for name in names):
        return None
    return graph_detections(outputs, input_size=input_size, strides=strides, test_cfg=test_cfg)


def _as_int(outputs: dict[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(outputs[name]).astype(np.int64) if name in outputs else np.zeros((0,), np.int64)


def _no_match(expected: Sequence[Detections]) -> DetectionMatch:
    """The match when the runner gave no usable detections: nothing matched."""
    return DetectionMatch(sum(len(found.scores) for found in expected), 0, 0, 0.0, 0.0)
