"""aple_jax/stats.py against hand computations: the t quantiles (integrated here, no scipy), sample std, intervals,
paired differences and verdicts."""
import math
from fractions import Fraction

import pytest

from aple_jax import stats


def t_cdf(x: float, df: int, steps: int = 4000) -> float:
    """Student's t CDF at x > 0: 1/2 + Simpson's rule over the density from 0 to x."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / steps
    total = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", [*range(1, 31), 31, 40, 60, 120])
def test_t_quantile_is_where_the_cdf_reaches_0975(df):
    q = stats.t975(df)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-8)


def test_t_quantile_known_values():
    # the textbook table's entries, and the normal quantile as df grows
    for df, q in ((1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042), (120, 1.980)):
        assert round(stats.t975(df), 3) == q
    assert stats.t975(10 ** 6) == pytest.approx(1.959964, abs=1e-5)     # the normal quantile
    assert all(stats.t975(d) > stats.t975(d + 1) for d in range(1, 200))     # decreasing, no seam at 30/31
    with pytest.raises(ValueError):
        stats.t975(0)


def test_stat_of_three_seeds_against_a_hand_computation():
    values = [74.0625, 73.125, 72.8125]                   # exact in binary: Fractions give the exact mean, variance
    exact = [Fraction(v) for v in values]
    mean = sum(exact) / 3
    variance = sum((v - mean) ** 2 for v in exact) / 2    # sample variance: n - 1 = 2
    std = math.sqrt(variance)
    half = 4.302652730 * std / math.sqrt(3)               # t(0.975, 2 df)
    s = stats.Stat.of(values)
    assert s.mean == pytest.approx(float(mean), abs=1e-12) and s.std == pytest.approx(std, abs=1e-12)
    assert s.ci95 == pytest.approx([float(mean) - half, float(mean) + half], abs=1e-9)
    assert s.std == pytest.approx(0.6505, abs=1e-4)       # population std would be 0.5311 (the report's former std)
    assert s.cell() == f"73.33 ± 0.65 [{float(mean) - half:.2f}, {float(mean) + half:.2f}]" == "73.33 ± 0.65 [71.72, 74.95]"


def test_one_seed_has_no_std_and_no_interval():
    s = stats.Stat.of([56.46])
    assert (s.mean, s.std, s.ci95, s.n) == (56.46, None, None, 1)
    assert s.cell() == "56.46 (1 seed)"


def test_paired_difference_and_verdicts():
    a = {1: 60.0, 2: 62.0, 3: 61.0, 4: 70.0}
    b = {1: 50.0, 2: 53.0, 3: 50.0}
    diff, seeds = stats.paired(a, b)
    assert seeds == [1, 2, 3] and diff.values == [10.0, 9.0, 11.0]
    half = 4.302652730 * 1.0 / math.sqrt(3)                 # differences 10, 9, 11: mean 10, sample std 1
    assert diff.ci95 == pytest.approx([10 - half, 10 + half])
    assert stats.verdict(diff.ci95, "aple", "maple") == "aple above maple"
    assert stats.verdict([-3.0, -0.5], "aple", "maple") == "maple above aple"
    assert stats.verdict([-0.5, 3.0], "aple", "maple") == "within noise"
    same, _ = stats.paired(a, a)
    assert same.ci95 == [0.0, 0.0] and stats.verdict(same.ci95, "a", "b") == "within noise"
    assert stats.paired({1: 1.0}, {2: 1.0}) is None
    assert stats.verdict(stats.paired({1: 2.0}, {1: 1.0})[0].ci95, "a", "b") == "no interval (one pair)"


def test_per_seed_average_keeps_the_seeds_every_dataset_has():
    table = {"Pets": {1: 90.0, 2: 92.0, 3: 91.0}, "DTD": {1: 60.0, 2: 64.0}}
    assert stats.per_seed_average(table) == {1: 75.0, 2: 78.0}
    assert stats.per_seed_average({}) == {}
