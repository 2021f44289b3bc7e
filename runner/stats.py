"""Uncertainty of the headline figures: confidence intervals of a mean, CV, and a steady-state check.

Every figure is a pure function of raw samples kept on the record, so a reader can recompute it.

From ``BOOTSTRAP_MIN_SAMPLES`` samples on, the interval is the percentile bootstrap: draw
``BOOTSTRAP_RESAMPLES`` resamples with replacement (numpy, seed ``BOOTSTRAP_SEED``, so the same samples
always give the same interval), compute the statistic on each, and take the 2.5th and 97.5th percentiles.
Below that it is Student's t interval, mean ± t(0.975, n−1)·sd/√n: a percentile bootstrap can never leave
the range of its samples, and three samples' range holds the true mean far less often than 95 % of the time
(tests/test_stats.py measures both; on the H100, three repetitions' bootstrap interval missed the same
config's next runs, their t interval did not: docs/results/repeat-h100-2026-11-22.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.special import stdtrit  # Student's t quantile (half the import time of scipy.stats)

BOOTSTRAP_RESAMPLES = 2000  # enough for stable 2.5/97.5 percentiles; ~1 ms for a few hundred samples
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
BOOTSTRAP_MIN_SAMPLES = 10  # fewer samples: Student's t (the module docstring says why)
# Below 5 repetitions there is no verdict: with 3 or 4 the half means cannot leave the bootstrap interval of so few
# samples (0 of 300 drifts of -10 % a repetition flagged at 4; the H200 seed's 16.1 / 6.3 / 5.7 s read steady)
STEADY_MIN_SAMPLES = 5


@dataclass
class Interval:
    """A 95 % interval of the mean and the coefficient of variation of the samples it came from."""

    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    cv: Optional[float] = None  # sample standard deviation / mean (ddof=1)
    n: int = 0  # how many samples
    method: Optional[str] = None  # "t" or "bootstrap" (mean_ci)


def bootstrap_ci(samples: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of ``statistic`` (default: the mean); None below two samples.

    ``statistic`` maps a (resamples, n) array to one value per row.
    """
    data = np.asarray(samples, dtype=float)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = data[rng.integers(0, data.size, size=(resamples, data.size))]
    values = statistic(draws) if statistic else draws.mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def t_half_width(samples: Sequence[float]) -> float | None:
    """Half the 95 % Student's t interval of the mean, t(0.975, n−1)·sd/√n; None below two samples."""
    data = np.asarray(samples, dtype=float)
    if data.size < 2:
        return None
    return float(stdtrit(data.size - 1, 0.5 + CONFIDENCE / 2) * data.std(ddof=1) / np.sqrt(data.size))


def t_ci(samples: Sequence[float]) -> tuple[float, float] | None:
    """95 % Student's t interval of the mean, its low end clipped at 0 (every figure it serves is a rate or a
    duration); None below two samples."""
    half = t_half_width(samples)
    if half is None:
        return None
    mean = float(np.mean(samples))
    return max(0.0, mean - half), mean + half


def mean_ci(samples: Sequence[float]) -> tuple[tuple[float, float] | None, str]:
    """95 % interval of the mean and its method: the bootstrap from BOOTSTRAP_MIN_SAMPLES samples, t below."""
    if len(samples) < BOOTSTRAP_MIN_SAMPLES:
        return t_ci(samples), "t"
    return bootstrap_ci(samples), "bootstrap"


def relative_half_width(samples: Sequence[float]) -> Optional[float]:
    """Half the width of the mean's 95 % interval over the mean (0.02: mean ± 2 %); None below two samples."""
    ci, _ = mean_ci(samples)
    mean = float(np.mean(samples)) if len(samples) else 0.0
    if ci is None or mean == 0:
        return None
    return (ci[1] - ci[0]) / 2 / abs(mean)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Interval of sum(numerators) / sum(denominators), resampling the pairs together (tokens / seconds
    per batch: the throughput of a resampled set of batches)."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    values = num[picks].sum(axis=1) / den[picks].sum(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def ratio_of_means_ci(numerators: Sequence[float], denominators: Sequence[float],
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Interval of mean(numerators) / mean(denominators) for two independent samples (a configuration's tok/s
    per repetition over its baseline's), each resampled on its own; None unless both have two or more."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if num.size < 2 or den.size < 2:
        return None
    rng = np.random.default_rng(seed)
    values = (num[rng.integers(0, num.size, size=(resamples, num.size))].mean(axis=1)
              / den[rng.integers(0, den.size, size=(resamples, den.size))].mean(axis=1))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cv(samples: Sequence[float]) -> Optional[float]:
    """Coefficient of variation: sample standard deviation (ddof=1) over the mean; None below two samples."""
    data = np.asarray(samples, dtype=float)
    if data.size < 2 or data.mean() == 0:
        return None
    return float(data.std(ddof=1) / data.mean())


def interval(samples: Sequence[float]) -> Interval:
    ci, method = mean_ci(samples)
    return Interval(ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None, cv=cv(samples), n=len(samples),
                    method=method if ci else None)


def first_out_of_line(samples: Sequence[float]) -> Optional[str]:
    """A note when the first repetition lies outside the 99 % prediction interval of the others (Student's t:
    mean ± t(0.995, n-1)·sd·√(1 + 1/n), n the other repetitions): the warm-up left work for the timed region.
    On an H200, eager HF's first pass over prompt lengths its one warm-up batch had not run read 34-53 % below
    the others (docs/results/speculative-h200-2026-12-02.md); i.i.d. normal noise trips this 1 % of the time."""
    first, rest = float(samples[0]), np.asarray(samples[1:], dtype=float)
    if rest.size < 2:  # no spread to predict from
        return None
    half_width = stdtrit(rest.size - 1, 0.995) * rest.std(ddof=1) * np.sqrt(1 + 1 / rest.size)
    if abs(first - rest.mean()) <= half_width:
        return None
    return (f"the first repetition ({first:.4g}) is out of line with the others (mean {rest.mean():.4g}, 99 % "
            f"prediction ±{half_width:.3g}): warm-up left work in the timed region (raise measure.warmup_batches "
            f"to cover every batch)")


def steady_state(samples: Sequence[float]) -> tuple[Optional[bool], str]:
    """Is a sequence of per-repetition figures free of drift and of an unfinished warm-up? (verdict, note).

    Drift: the mean of the second half differs from the mean of the first half by more than the width
    of the 95 % interval of the mean of all samples (with an odd count the middle one is in neither
    half). Warming caches, thermal throttling or a noisy neighbour show up as such a trend. An unfinished
    warm-up: ``first_out_of_line``.
    """
    data = list(samples)
    if len(data) < STEADY_MIN_SAMPLES:
        return None, f"needs at least {STEADY_MIN_SAMPLES} repetitions (measure.repetitions), got {len(data)}"
    half = len(data) // 2
    first, second = float(np.mean(data[:half])), float(np.mean(data[-half:]))
    low, high = bootstrap_ci(data)  # a yardstick of the noise, not a claim of coverage
    drift = second - first
    note = (f"second-half mean {second:.4g} vs first-half {first:.4g} (change {drift:+.4g}); "
            f"95% CI width {high - low:.4g}")
    warmup = first_out_of_line(data)
    return abs(drift) <= high - low and warmup is None, note + (f"; {warmup}" if warmup else "")
