"""Statistics over seeds: mean, sample std (n-1), the Student-t 95% interval of a mean, paired differences and their
verdicts, and per-seed averages over datasets."""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

# The 0.975 quantile of Student's t with 1..30 degrees of freedom (tests/test_stats.py checks each against the t
# distribution's CDF, integrated numerically).
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
         2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
         2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)
_Z975 = 1.959963984540054
LEGEND = ("mean ± sample std (n-1) over seeds, [95% interval of the mean] (Student t, n-1 degrees of freedom); "
          "one seed: no std and no interval")


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t: the table up to 30 degrees of freedom, then the Cornish-Fisher expansion
    about the normal quantile (Abramowitz & Stegun 26.7.5; within 1e-7 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df}; expected >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


@dataclasses.dataclass(frozen=True)
class Stat:
    """A mean over seeds with its sample std and 95% interval (both None for one value)."""
    mean: float
    std: float | None
    values: list[float]
    ci95: list[float] | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            raise ValueError("a statistic of no values")
        mean = math.fsum(values) / n
        if n == 1:
            return cls(mean, None, values, None)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t975(n - 1) * std / math.sqrt(n)
        return cls(mean, std, values, [mean - half, mean + half])

    @property
    def n(self) -> int:
        return len(self.values)

    def cell(self) -> str:
        """`73.33 ± 0.65 [71.71, 74.95]`, or `73.33 (1 seed)`."""
        if self.ci95 is None:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.std:.2f} [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]"


def verdict(ci95: Sequence[float] | None, a: str, b: str) -> str:
    """"A above B" when the interval of A - B lies above 0, "B above A" below it, else "within noise"."""
    if ci95 is None:
        return "no interval (one pair)"
    if ci95[0] > 0:
        return f"{a} above {b}"
    if ci95[1] < 0:
        return f"{b} above {a}"
    return "within noise"


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[Stat, list[int]] | None:
    """The per-seed differences a[s] - b[s] over the seeds both have, as a Stat, and those seeds; None if none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return Stat.of([a[s] - b[s] for s in seeds]), seeds


def per_seed_average(table: Mapping[str, Mapping[int, float]]) -> dict[int, float]:
    """Per seed, the mean over the table's rows (datasets) of that seed's value; only seeds every row has."""
    rows = list(table.values())
    if not rows:
        return {}
    seeds = sorted(set.intersection(*(set(r) for r in rows)))
    return {s: math.fsum(r[s] for r in rows) / len(rows) for s in seeds}
