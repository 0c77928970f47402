"""The comparator's statistics and verdicts."""

import numpy as np
import pytest

from ldexport.parity.compare import Tolerance, compare_arrays, compare_outputs


def test_statistics_of_a_passing_output():
    reference = np.array([[1.0, 2.0, 4.0, 0.0]] * 25, np.float32)
    candidate = reference + np.array([1e-4, -2e-4, 0.0, 5e-4], np.float32)
    stats = compare_arrays("boxes", reference, candidate, Tolerance(atol=1e-3))
    assert stats.passed and stats.detail == "" and stats.shape == (25, 4)
    assert stats.max_abs == pytest.approx(5e-4, rel=1e-3)
    assert stats.mean_abs == pytest.approx(2e-4, rel=1e-3)
    assert stats.p99_abs == pytest.approx(5e-4, rel=1e-3)
    assert stats.max_rel == pytest.approx(1e-4, rel=1e-3)  # zeros in the reference are left out


def test_an_element_out_of_tolerance_fails_and_is_located():
    reference = np.zeros((2, 3), np.float32)
    candidate = reference.copy()
    candidate[1, 2] = 2e-5
    stats = compare_arrays("scores", reference, candidate, Tolerance(atol=1e-5))
    assert not stats.passed and "1 of 6 elements" in stats.detail and "(1, 2)" in stats.detail
    assert compare_arrays("scores", reference, candidate, Tolerance(atol=0.0, rtol=1.0)).passed is False
    assert compare_arrays("scores", reference + 1, candidate + 1, Tolerance(atol=0.0, rtol=1e-4)).passed


def test_shapes_missing_outputs_and_nans_fail():
    assert "shape" in compare_arrays("boxes", np.zeros((1, 4)), np.zeros((2, 4)), Tolerance(1.0)).detail
    nan = compare_arrays("boxes", np.zeros(3), np.array([0.0, np.nan, 0.0]), Tolerance(1.0))
    assert not nan.passed and "NaN" in nan.detail
    assert not compare_arrays("boxes", np.array([np.nan]), np.array([np.nan]), Tolerance(0.0)).passed
    results = compare_outputs({"boxes": np.zeros(2)}, {}, {"boxes": Tolerance(1.0), "scores": Tolerance(1.0)})
    assert [r.passed for r in results] == [False, False] and "candidate" in results[0].detail and "reference" in results[1].detail


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["candidate", "reference", "both"])
def test_a_nan_or_an_infinity_fails_on_either_side_and_its_statistics_say_so(bad, where):
    reference = np.linspace(0.1, 1.0, 200)
    candidate = reference.copy()
    if where in ("reference", "both"):
        reference[7] = bad
    if where in ("candidate", "both"):
        candidate[7] = bad
    stats = compare_arrays("scores", reference, candidate, Tolerance(atol=1e6, rtol=1.0))
    assert not stats.passed and "not finite" in stats.detail
    # the element counts as an infinite error; the other 199 agree exactly
    assert stats.max_abs == stats.mean_abs == stats.max_rel == np.inf
    assert stats.p99_abs == 0.0 and stats.p99_rel == 0.0  # one element in 200 is past the 99th percentile


def test_p99_of_errors_with_infinities_is_not_nan():
    reference = np.zeros(10)
    candidate = np.full(10, np.inf)
    stats = compare_arrays("boxes", reference, candidate, Tolerance(atol=1.0))
    assert stats.p99_abs == np.inf and stats.max_abs == np.inf and not stats.passed
