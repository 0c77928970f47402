"""The parity report: a table for the terminal, a JSON file for the record.

The JSON file is strict JSON (RFC 8259), which has no NaN or infinity: a number that is
not finite (an unbounded tolerance such as int8's ``box_atol``, the statistics of an
output whose shape differs or that holds NaN) is written as ``null``. It records the
versions of what computed it (:func:`versions`).
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from ldexport import __version__

from ldexport.parity.check import ParityReport
from ldexport.io import atomic_write_bytes

_HEADER = ("case", "shape", "runner", "output", "max abs", "mean abs", "p99 abs", "max rel", "verdict")


def format_table(report: ParityReport) -> str:
    """One row per case, runner and output, then one for its detections; a verdict line."""
    rows: list[tuple[str, ...]] = []
    for case in report.cases:
        shape = "x".join(map(str, case.shape))
        for result in case.results:
            for stats in result.outputs:
                rows.append(
                    (
                        case.case,
                        shape,
                        result.runner,
                        stats.name,
                        _number(stats.max_abs),
                        _number(stats.mean_abs),
                        _number(stats.p99_abs),
                        _number(stats.max_rel),
                        "ok" if stats.passed else f"FAIL (atol {stats.atol:g}) {stats.detail}",
                    )
                )
            found = result.detections
            rows.append(
                (
                    case.case,
                    shape,
                    result.runner,
                    "detections",
                    *(
                        (f"box {_number(found.max_box_error)}", f"score {_number(found.max_score_error)}")
                        if result.tolerance is None or result.tolerance.element_wise
                        else (f"mean IoU {found.mean_iou:.3f}", f"mean score {_number(found.mean_score_error)}")
                    ),
                    f"ref {found.matched}/{found.reference}" + _borderline(found.borderline_reference),
                    f"ours {found.matched}/{found.candidate}" + _borderline(found.borderline_candidate),
                    ("ok" if result.detections_passed else "FAIL") if result.tolerance is None or result.tolerance.element_wise else "over all cases",
                )
            )
    widths = [max(len(row[column]) for row in [_HEADER, *rows]) for column in range(len(_HEADER) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in [_HEADER, *rows]]
    matched = sum(result.detections.matched for case in report.cases for result in case.results)
    expected = sum(result.detections.reference for case in report.cases for result in case.results)
    failed = sum(not case.passed for case in report.cases)
    verdict = "PASSED" if report.passed else f"FAILED ({failed} of {len(report.cases)} cases)"
    tolerance = report.tolerance
    if tolerance is not None and not tolerance.element_wise:
        verdict = "PASSED" if report.passed else "FAILED"
        for name, match in report.matched_by_runner().items():
            lines.append(
                f"{name}: {match.reference_recall:.1%} of the reference's detections found, "
                f"{match.candidate_precision:.1%} of its own known to the reference (same label, IoU >= {tolerance.match_iou:g}; "
                f"at least {tolerance.min_matched:.0%} each); matched pairs: mean IoU {match.mean_iou:.3f} "
                f"(>= {tolerance.pair_iou_mean:g}), mean score error {match.mean_score_error:.3g} (<= {tolerance.pair_score_mean:g}): "
                + ("ok" if report.detections_passed(name) else "FAIL")
            )
    precision = "fp32" if tolerance is None else tolerance.precision
    lines += [f"note: {note}" for note in report.notes]
    lines += [f"WARNING: {warning}" for warning in report.warnings]
    lines.append(
        f"parity {verdict} at {precision} tolerances: {len(report.cases)} cases, runners {', '.join(report.runners)} "
        f"vs {report.reference}; {matched}/{expected} reference detections matched"
    )
    return "\n".join(lines)


def write_json(report: ParityReport, path: str | Path, **context: Any) -> None:
    """Writes the report (and ``context``: files, settings) and :func:`versions` as strict
    JSON, atomically."""
    data = _finite({**context, "versions": versions(), **report.to_json()})
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def versions() -> dict[str, str | None]:
    """Python's and the installed packages' versions (``None``: not installed)."""
    from importlib import metadata

    def version(*distributions: str) -> str | None:
        for name in distributions:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": platform.python_version(),
        "ldexport": __version__,
        "numpy": version("numpy"),
        "torch": version("torch"),
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": version("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
    }


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _borderline(count: int) -> str:
    return f" (+{count} at thr)" if count else ""


def _number(value: float) -> str:
    return f"{value:.2e}"
