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

A detection found on one side only is no mismatch when its score is within the score
tolerance of the threshold (:mod:`ldexport.parity.detections`, "borderline"; counted in
the report); ``num_dets`` then differs by those, and is judged by the match instead.

Those are fp32's rules. An int8 graph is judged by statistics instead, with the share of
detections matched both ways taken over all of a runner's cases
(:mod:`ldexport.parity.tolerance`); the report records the precision and its tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ldexport.export.nms import DETECTION_OUTPUTS
from ldexport.model.detector import Detections, TestConfig
from ldexport.parity.base import Runner
from ldexport.parity.compare import ErrorStats, Tolerance, compare_arrays, compare_outputs
from ldexport.parity.detections import DetectionMatch, graph_detections, match_detections
from ldexport.parity.inputs import Case
from ldexport.parity.runners import TorchRunner
from ldexport.parity.tolerance import ParityTolerance, fp32_tolerance

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
        tolerance: the precision's tolerances (``None``: fp32's, from the two above).
    """

    runner: str
    outputs: list[ErrorStats]
    detections: DetectionMatch
    box_atol: float
    score_atol: float
    tolerance: ParityTolerance | None = None

    @property
    def detections_passed(self) -> bool:
        """fp32: all detections matched both ways, matched pairs within tolerance. int8:
        judged over all cases (:meth:`ParityReport.detections_passed`), so always true here."""
        found = self.detections
        if self.tolerance is None or self.tolerance.element_wise:
            return found.passed and found.max_box_error <= self.box_atol and found.max_score_error <= self.score_atol
        return True

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
    """The whole comparison.

    Attributes:
        reference, runners: the reference's and the candidates' names.
        cases: each input's results.
        tolerance: the precision's tolerances (``None``: fp32's defaults).
        notes: what was chosen for the user, and why (random cases skipped, say).
        warnings: what was not tested although the report passes (no detections compared).
        placements: where each runner ran, by name (:attr:`Runner.placement
            <ldexport.parity.base.Runner.placement>`).
    """

    reference: str
    runners: list[str]
    cases: list[CaseResult]
    tolerance: ParityTolerance | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    placements: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every case passed (and there was at least one); for int8, each runner's
        detections also passed over all cases (:meth:`detections_passed`)."""
        if not self.cases or not all(case.passed for case in self.cases):
            return False
        return all(self.detections_passed(name) for name in self.runners)

    def detections_passed(self, runner: str) -> bool:
        """int8: the runner's detections over all cases: the share matched both ways, the
        matched pairs' mean IoU and mean score error (fp32 judges each case instead)."""
        tolerance = self.tolerance
        if tolerance is None or tolerance.element_wise:
            return True
        match = self.matched_by_runner()[runner]
        return (
            min(match.reference_recall, match.candidate_precision) >= tolerance.min_matched
            and match.mean_iou >= (tolerance.pair_iou_mean or 1.0)
            and match.mean_score_error <= (tolerance.pair_score_mean or 0.0)
        )

    def matched_by_runner(self) -> dict[str, DetectionMatch]:
        """Each runner's detections over all cases: counts summed, errors over all pairs."""
        found: dict[str, list[DetectionMatch]] = {name: [] for name in self.runners}
        for case in self.cases:
            for result in case.results:
                found.setdefault(result.runner, []).append(result.detections)
        return {name: _combine(matches) for name, matches in found.items()}

    def to_json(self) -> dict:
        """As JSON-able data."""
        tolerance = self.tolerance
        return {
            "passed": self.passed,
            "precision": "fp32" if tolerance is None else tolerance.precision,
            "tolerance": None if tolerance is None else tolerance.to_json(),
            "detections": {
                name: {**match.to_json(), "passed": self.detections_passed(name)}
                for name, match in self.matched_by_runner().items()
            },
            "reference": self.reference,
            "runners": self.runners,
            "placements": self.placements,
            "notes": self.notes,
            "warnings": self.warnings,
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


def _combine(matches: Sequence[DetectionMatch]) -> DetectionMatch:
    """Several cases' matches as one: counts summed, means weighted by the pairs."""
    pairs = sum(match.matched for match in matches)

    def mean(name: str, empty: float) -> float:
        return sum(getattr(match, name) * match.matched for match in matches) / pairs if pairs else empty

    return DetectionMatch(
        reference=sum(match.reference for match in matches),
        candidate=sum(match.candidate for match in matches),
        matched=pairs,
        max_box_error=max((match.max_box_error for match in matches), default=0.0),
        max_score_error=max((match.max_score_error for match in matches), default=0.0),
        mean_box_error=mean("mean_box_error", 0.0),
        mean_score_error=mean("mean_score_error", 0.0),
        mean_iou=mean("mean_iou", 1.0),
        borderline_reference=sum(match.borderline_reference for match in matches),
        borderline_candidate=sum(match.borderline_candidate for match in matches),
    )


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
    tolerance: ParityTolerance | None = None,
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
        tolerance: the precision's tolerances; ``None``: fp32's with ``box_atol`` and
            ``score_atol`` (:mod:`ldexport.parity.tolerance`).
    """
    tolerance = tolerance or fp32_tolerance(box_atol, score_atol)
    box_atol, score_atol = tolerance.box_atol, tolerance.score_atol
    report = ParityReport(reference.name, [runner.name for runner in runners], [], tolerance)
    report.placements = {runner.name: runner.placement for runner in (reference, *runners)}
    # fp32: a detection within score_atol of the threshold may fall on either side of it
    borderline = (test_cfg.score_thr, score_atol) if tolerance.element_wise else None
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
            stats = _compare(expected_outputs, outputs, detections, tolerance)
            found = _usable_detections(expected_outputs, outputs, detections, input_size, strides, test_cfg)
            match = _no_match(expected) if found is None else match_detections(expected, found, iou=tolerance.match_iou, borderline=borderline)
            if detections and (match.borderline_reference or match.borderline_candidate):
                stats = [_count_by_match(item, match) if item.name == "num_dets" else item for item in stats]
            result.results.append(RunnerResult(runner.name, stats, match, box_atol, score_atol, tolerance))
        report.cases.append(result)
    if detections and runners and report.cases and not _any_detection(report):
        report.warnings.append(
            f"no detections were compared: neither {report.reference} nor {', '.join(report.runners)} found any above the graph's "
            f"score threshold ({test_cfg.score_thr:g}) in {len(report.cases)} case{'s' if len(report.cases) != 1 else ''}, so the boxes, scores and labels "
            "after NMS went unchecked: give --images the model detects objects on, or re-export with a lower threshold "
            "(ldexport onnx ... --set test.score_thr=0.01)"
        )
    return report


def _any_detection(report: ParityReport) -> bool:
    """Whether any case had a detection, on the reference's side or a runner's."""
    return any(result.detections.reference or result.detections.candidate for case in report.cases for result in case.results)


def _input_size(case: Case) -> tuple[int, int]:
    """``(H, W)`` of a case's input, NCHW float or NHWC bytes."""
    shape = case.images.shape
    return (int(shape[1]), int(shape[2])) if case.images.dtype == np.uint8 else (int(shape[2]), int(shape[3]))


def _compare(
    expected: dict[str, np.ndarray], outputs: dict[str, np.ndarray], detections: bool, tolerance: ParityTolerance
) -> list[ErrorStats]:
    """Per-output statistics: fp32: ``num_dets`` exactly after NMS, else boxes and scores
    element-wise. int8: the dense scores by their p99 and mean error (boxes and
    ``num_dets`` reported, judged through the detections)."""
    if detections:
        count_tolerance = Tolerance(0.0 if tolerance.element_wise else float("inf"))
        return [compare_arrays("num_dets", _as_int(expected, "num_dets"), _as_int(outputs, "num_dets"), count_tolerance)]
    stats = compare_outputs(expected, outputs, {"boxes": Tolerance(tolerance.box_atol), "scores": Tolerance(tolerance.score_atol)})
    return stats if tolerance.element_wise else [_judge_statistics(item, tolerance) for item in stats]


def _judge_statistics(stats: ErrorStats, tolerance: ParityTolerance) -> ErrorStats:
    """An int8 output's verdict from its statistics: the scores' p99 and mean error."""
    if stats.name != "scores" or stats.detail.startswith(("shape", "no ", "not finite")):
        return stats
    p99, mean = tolerance.score_p99 or 0.0, tolerance.score_mean or 0.0
    passed = stats.p99_abs <= p99 and stats.mean_abs <= mean
    detail = "" if passed else f"p99 abs error {stats.p99_abs:.3g} (<= {p99:g}), mean {stats.mean_abs:.3g} (<= {mean:g})"
    return replace(stats, atol=p99, passed=passed, detail=detail)


def _count_by_match(stats: ErrorStats, match: DetectionMatch) -> ErrorStats:
    """``num_dets`` where borderline detections were found on one side only: the counts
    agree when every other detection matched (the match counts each side's detections)."""
    if stats.passed or not match.passed:
        return stats
    excused = match.borderline_reference + match.borderline_candidate
    return replace(stats, passed=True, detail=f"differs by {excused} borderline detection{'s' if excused != 1 else ''} (at the score threshold)")


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
