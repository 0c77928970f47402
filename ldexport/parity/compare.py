"""Comparing two runners' outputs tensor by tensor, as Polygraphy's comparator does.

For each output: the shapes must agree, and every element must be finite on both sides
and satisfy ``|candidate - reference| <= atol + rtol * |reference|``. A NaN or an infinity
fails wherever it is, the reference's included (NaN against NaN is no agreement: nothing
was checked). The statistics reported are the max, mean and 99th percentile of the
absolute and the relative error (relative to ``|reference|``, zeros excluded), an element
that is not finite on either side counting as an infinite error.
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
    finite = np.isfinite(ref) & np.isfinite(cand)
    absolute = np.abs(np.subtract(cand, ref, out=np.full_like(ref, np.inf), where=finite))
    magnitude = np.where(finite, np.abs(ref), 0.0)
    counted = ~finite | (magnitude > 0)  # relative error: zeros of the reference left out
    relative = absolute[counted] / np.where(finite, magnitude, 1.0)[counted]
    within = finite & (absolute <= tolerance.atol + tolerance.rtol * magnitude)
    passed = bool(np.all(within))
    detail = ""
    if not bool(np.all(finite)):
        detail = (
            f"not finite (NaN or Inf): {int(np.sum(~np.isfinite(cand)))} elements of the candidate, "
            f"{int(np.sum(~np.isfinite(ref)))} of the reference"
        )
    elif not passed:
        worst = np.unravel_index(int(np.argmax(absolute)), absolute.shape)
        detail = (
            f"{int(np.sum(~within))} of {absolute.size} elements out of tolerance; worst at {tuple(map(int, worst))}: "
            f"{cand[worst]:.6g} vs {ref[worst]:.6g}"
        )
    return ErrorStats(
        name=name,
        shape=shape,
        max_abs=_stat(absolute, np.max),
        mean_abs=_stat(absolute, np.mean),
        p99_abs=_stat(absolute, _p99),
        max_rel=_stat(relative, np.max),
        mean_rel=_stat(relative, np.mean),
        p99_rel=_stat(relative, _p99),
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


def _p99(values: np.ndarray) -> float:
    """The 99th percentile; with infinite errors the element at that rank (interpolating
    towards an infinity gives NaN)."""
    return float(np.percentile(values, 99, method="linear" if np.all(np.isfinite(values)) else "higher"))
