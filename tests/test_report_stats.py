"""Student's t distribution, t-intervals and the paired t-test, against printed tables and closed forms."""

from __future__ import annotations

import math

import pytest

from refine_bench.report.stats import mean_ci, paired_t_test, t_cdf, t_quantile, t_two_sided_p

# Two-sided 95% critical values t_{0.975, df} as printed in standard t tables (3 decimals).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


@pytest.mark.parametrize(("df", "want"), sorted(T_975.items()))
def test_t_quantile_matches_printed_table(df: int, want: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(want, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry() -> None:
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=5e-4)
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert t_quantile(0.9995, 3) == pytest.approx(12.924, abs=5e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), abs=1e-12)
    assert t_quantile(0.5, 7) == 0.0
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_closed_forms_for_one_and_two_degrees_of_freedom(p: float) -> None:
    # df = 1 is the Cauchy distribution; df = 2 has F^-1(p) = (2p - 1) / sqrt(2 p (1 - p)).
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


@pytest.mark.parametrize("t", [-7.5, -1.0, 0.0, 0.3, 2.0, 40.0])
def test_cdf_closed_forms(t: float) -> None:
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)


def test_agrees_with_scipy_where_installed() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 12, 29, 100, 1000):
        for p in (0.01, 0.3, 0.9, 0.975, 0.9995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
        for t in (-4.0, -0.5, 1.2, 3.0, 25.0):
            assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-10)


def test_mean_ci_hand_computed() -> None:
    est = mean_ci([60.0, 70.0, 80.0])  # mean 70, sd 10, n 3
    assert (est.n, est.mean, est.sd) == (3, 70.0, 10.0)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} in closed form
    assert est.half_width == pytest.approx(t2 * 10 / math.sqrt(3), rel=1e-10)
    assert est.low == pytest.approx(70 - t2 * 10 / math.sqrt(3))
    single = mean_ci([42.0])
    assert (single.n, single.mean, single.sd, single.half_width, single.low) == (1, 42.0, None, None, None)


def test_paired_t_test_hand_computed() -> None:
    refine, sft = [72.0, 75.0, 90.0], [60.0, 70.0, 80.0]  # differences 12, 5, 10
    res = paired_t_test(refine, sft)
    sd = math.sqrt(((12 - 9) ** 2 + (5 - 9) ** 2 + (10 - 9) ** 2) / 2)  # sqrt(13)
    t = 9 / (sd / math.sqrt(3))
    assert res.difference.mean == pytest.approx(9.0) and res.difference.sd == pytest.approx(math.sqrt(13))
    assert res.t == pytest.approx(t) and res.df == 2
    assert res.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # two-sided p at df 2, closed form: 0.0495
    assert res.p == pytest.approx(0.04954, abs=5e-5)
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert res.difference.half_width == pytest.approx(t2 * math.sqrt(13) / math.sqrt(3))
    # The test depends only on the differences: shifting both arms changes nothing.
    shifted = paired_t_test([x + 5 for x in refine], [x + 5 for x in sft])
    assert shifted.t == pytest.approx(res.t) and shifted.p == pytest.approx(res.p)


def test_paired_t_test_degenerate_cases() -> None:
    one = paired_t_test([5.0], [3.0])
    assert one.difference.mean == 2.0 and (one.t, one.df, one.p) == (None, None, None)
    same = paired_t_test([4.0, 6.0], [2.0, 4.0])  # every difference 2: no spread
    assert same.t == math.inf and same.p == 0.0 and same.df == 1
    zero = paired_t_test([4.0, 6.0], [4.0, 6.0])
    assert zero.t is None and zero.p == 1.0
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [1.0])
