"""Comparing two runners' outputs tensor by tensor, as Polygraphy's comparator does.

For each output: the shapes must agree, and every element must satisfy
``|candidate - reference| <= atol + rtol * |reference|`` (NaN only where the reference
has NaN). The statistics reported are the max, mean and 99th percentile of the absolute
and the relative error (relative to ``|reference|``, zeros excluded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Per-output tolerance: ``|a - b| <= atol + rtol * |reference|``."""

    atol: float
    rtol: float = 0.0


@dataclass(frozen=True)
class ErrorStats:
    """Error statistics of one output.

    Attributes:
        name: the output's name.
        shape: the reference's shape.
        max_abs, mean_abs, p99_abs: absolute error.
        max_rel, mean_rel, p99_rel: error relative to ``|reference|`` (zeros excluded).
        atol, rtol: the tolerance applied.
        passed: every element within tolerance and the shapes equal.
        detail: why it failed, when it did ("" otherwise).
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    p99_rel: float
    atol: float
    rtol: float
    passed: bool
    detail: str = ""

    def to_json(self) -> dict:
        """The statistics as JSON-able data."""
        return asdict(self)


def compare_arrays(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> ErrorStats:
    """Compares one output (see the module doc)."""
    shape = tuple(int(size) for size in reference.shape)
    if reference.shape != candidate.shape:
        return ErrorStats(
            name, shape, *(float("inf"),) * 6, tolerance.atol, tolerance.rtol, False,
            f"shape {tuple(candidate.shape)} differs from the reference's {shape}",
        )
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    both_nan = np.isnan(ref) & np.isnan(cand)
    nan_mismatch = bool(np.any(np.isnan(ref) != np.isnan(cand)))
    absolute = np.where(both_nan, 0.0, np.abs(cand - ref))
    magnitude = np.where(both_nan, 0.0, np.abs(ref))
    nonzero = magnitude > 0
    relative = absolute[nonzero] / magnitude[nonzero]
    within = both_nan | (absolute <= tolerance.atol + tolerance.rtol * magnitude)
    passed = bool(np.all(within)) and not nan_mismatch
    detail = ""
    if nan_mismatch:
        detail = "NaN where the reference has none (or the reverse)"
    elif not passed:
        worst = np.unravel_index(int(np.nanargmax(absolute)), absolute.shape)
        detail = (
            f"{int(np.sum(~within))} of {absolute.size} elements out of tolerance; worst at {tuple(map(int, worst))}: "
            f"{cand[worst]:.6g} vs {ref[worst]:.6g}"
        )
    return ErrorStats(
        name=name,
        shape=shape,
        max_abs=_stat(absolute, np.max),
        mean_abs=_stat(absolute, np.mean),
        p99_abs=_stat(absolute, lambda values: np.percentile(values, 99)),
        max_rel=_stat(relative, np.max),
        mean_rel=_stat(relative, np.mean),
        p99_rel=_stat(relative, lambda values: np.percentile(values, 99)),
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        passed=passed,
        detail=detail,
    )


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance],
) -> list[ErrorStats]:
    """Compares every output named in ``tolerances``; a missing one fails."""
    results = []
    for name, tolerance in tolerances.items():
        if name not in reference or name not in candidate:
            missing = "reference" if name not in reference else "candidate"
            results.append(
                ErrorStats(name, (), *(float("inf"),) * 6, tolerance.atol, tolerance.rtol, False, f"no {name!r} from the {missing}")
            )
            continue
        results.append(compare_arrays(name, reference[name], candidate[name], tolerance))
    return results


def _stat(values: np.ndarray, reduce) -> float:  # noqa: ANN001
    return float(reduce(values)) if values.size else 0.0
