"""The memorised share and what it is read against (``oasisvq.evaluate.reference``):
its binomial interval and the share real held-out scans reach by the same rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oasisvq.evaluate.reference import memorised_shares, wilson_interval


def test_wilson_interval_matches_the_closed_form_and_covers_the_share() -> None:
    # 5 of 64 at z = 1.96: the textbook Wilson score interval
    low, high = wilson_interval(5, 64)
    p, n, z = 5 / 64, 64, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert 0.03 < low < p < high < 0.18
    # no event: the interval starts at 0 and is not empty; all events: it ends at 1
    assert wilson_interval(0, 64)[0] == 0.0 and 0.04 < wilson_interval(0, 64)[1] < 0.07
    assert wilson_interval(64, 64)[1] == pytest.approx(1.0)
    # more samples, narrower interval around the same share
    wide, narrow = wilson_interval(8, 64), wilson_interval(32, 256)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_real_scans_are_judged_against_the_others_percentile() -> None:
    real = np.array([0.70, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.95])
    out = memorised_shares(np.array([0.5, 0.96, 0.80, 0.6]), real)
    threshold = np.percentile(real, 99)
    assert 0.78 < threshold < 0.95
    assert out["memorised_share"] == pytest.approx(1 / 4)  # only 0.96 is above
    # leave one out: only the outlier 0.95 lies above the 99th percentile of the rest
    assert out["memorised_share_of_real"] == pytest.approx(1 / 10)
    assert out["memorised_share_ci95"] == pytest.approx(wilson_interval(1, 4))
    # held-out values drawn like the samples: the rule flags about 1 / m of the real ones
    rng = np.random.default_rng(0)
    many = memorised_shares(rng.normal(size=50), rng.normal(size=23))
    assert many["memorised_share_of_real"] == pytest.approx(1 / 23)
    assert math.isnan(memorised_shares(np.array([0.5]), np.array([0.4]))["memorised_share_of_real"])
