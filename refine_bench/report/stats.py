"""Small-sample statistics for results over seeds: Student's t distribution, t confidence intervals and the paired
t-test.

The t distribution is computed here (regularised incomplete beta function by its continued fraction, quantile by
bisection on the CDF) rather than taken from scipy, which is not a dependency: the numbers are the same on every
install. Tests pin it to printed table values and, where scipy is installed, to scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean, stdev

CONFIDENCE = 0.95
_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b  # symmetry I_x(a,b) = 1 - I_1-x(b,a)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|)."""
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on the CDF to double precision)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Estimate:
    """Mean of n values with its two-sided t confidence interval (half_width None when n < 2)."""

    n: int
    mean: float
    sd: float | None
    half_width: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: list[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean ± t_{(1+c)/2, n-1} · sd / sqrt(n) of `values` (at least one)."""
    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = fmean(values)
    if n < 2:
        return Estimate(n, mean, None, None)
    sd = stdev(values)
    return Estimate(n, mean, sd, t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of mean(a - b) = 0 over n pairs: the mean difference with its CI, t, df and two-sided p."""

    difference: Estimate
    t: float | None
    df: int | None
    p: float | None


def paired_t_test(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> PairedTest:
    """Test the differences a_i - b_i (pairs in the given order). With fewer than 2 pairs there is no test; with
    identical differences t is ±inf (p = 0) or, when they are all 0, undefined (p = 1)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_t_test needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    estimate = mean_ci(diffs, confidence)
    if estimate.n < 2 or estimate.sd is None:
        return PairedTest(estimate, None, None, None)
    df = estimate.n - 1
    se = estimate.sd / math.sqrt(estimate.n)
    if se == 0.0:
        if estimate.mean == 0.0:
            return PairedTest(estimate, None, df, 1.0)
        return PairedTest(estimate, math.copysign(math.inf, estimate.mean), df, 0.0)
    t = estimate.mean / se
    return PairedTest(estimate, t, df, t_two_sided_p(t, df))
