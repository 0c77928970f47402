"""The parity report: a table for the terminal, a JSON file for the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
                    f"box {_number(found.max_box_error)}",
                    f"score {_number(found.max_score_error)}",
                    f"ref {found.matched}/{found.reference}",
                    f"ours {found.matched}/{found.candidate}",
                    "ok" if result.detections_passed else "FAIL",
                )
            )
    widths = [max(len(row[column]) for row in [_HEADER, *rows]) for column in range(len(_HEADER) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in [_HEADER, *rows]]
    matched = sum(result.detections.matched for case in report.cases for result in case.results)
    expected = sum(result.detections.reference for case in report.cases for result in case.results)
    failed = sum(not case.passed for case in report.cases)
    verdict = "PASSED" if report.passed else f"FAILED ({failed} of {len(report.cases)} cases)"
    lines.append(
        f"parity {verdict}: {len(report.cases)} cases, runners {', '.join(report.runners)} vs {report.reference}; "
        f"{matched}/{expected} reference detections matched"
    )
    return "\n".join(lines)


def write_json(report: ParityReport, path: str | Path, **context: Any) -> None:
    """Writes the report (and ``context``: files, settings) as JSON, atomically."""
    data = {**context, **report.to_json()}
    atomic_write_bytes(Path(path), (json.dumps(data, indent=2) + "\n").encode())


def _number(value: float) -> str:
    return f"{value:.2e}"
