"""Intervals against closed forms and simulation."""
import math

import numpy as np
import pytest

from vitsam import stats
from vitsam.errors import VitsamError


def test_wilson_interval_matches_the_closed_form():
    # Wilson (1927) for 80 of 100: center (p + z^2/2n) / (1 + z^2/n), half-width as below
    z, n, p = 1.959963984540054, 100, 0.8
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    est = stats.accuracy_interval(80, 100)
    assert est.value == 0.8
    assert est.low == pytest.approx(center - half) and est.high == pytest.approx(center + half)
    assert stats.accuracy_interval([True] * 80 + [False] * 20).low == pytest.approx(est.low)


def test_wilson_interval_stays_inside_unit_range_at_the_edges():
    est = stats.accuracy_interval(10, 10)
    assert est.high == 1.0 and 0.6 < est.low < 1.0 and stats.accuracy_interval(0, 10).low == 0.0


def test_wilson_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(0)
    hits = sum(stats.accuracy_interval(int(k), 200).low <= 0.7 <= stats.accuracy_interval(int(k), 200).high
               for k in rng.binomial(200, 0.7, size=2000))
    assert 0.93 < hits / 2000 < 0.97


def test_paired_difference_is_tighter_than_unpaired_when_models_agree():
    rng = np.random.default_rng(1)
    a = rng.random(2000) < 0.8
    b = a.copy()
    flip = rng.choice(2000, 60, replace=False)            # b differs from a on 3% of images
    b[flip] = ~b[flip]
    est = stats.paired_difference(a, b)
    assert est.value == pytest.approx(b.mean() - a.mean())
    unpaired_half = 1.96 * math.sqrt(2 * 0.8 * 0.2 / 2000)
    assert (est.high - est.low) / 2 < 0.5 * unpaired_half
    assert est.low <= est.value <= est.high


def test_paired_difference_excludes_zero_only_for_a_real_gain():
    a = np.zeros(1000, bool)
    b = a.copy()
    b[:50] = True                                         # +5 points, every change in one direction
    assert stats.paired_difference(a, b).excludes_zero()
    c = a.copy()
    c[:3] = True
    c[3:6] = False
    assert not stats.paired_difference(a, c).excludes_zero()


def test_paired_difference_rejects_different_image_sets():
    with pytest.raises(VitsamError, match="same images"):
        stats.paired_difference([True, False], [True])


def test_difference_of_differences_subtracts_the_two_gains():
    a1, b1 = np.zeros(500, bool), np.zeros(500, bool)
    b1[:100] = True                                       # gain +0.2
    a2, b2 = np.zeros(400, bool), np.zeros(400, bool)
    b2[:20] = True                                        # gain +0.05
    est = stats.difference_of_differences((a1, b1), (a2, b2))
    assert est.value == pytest.approx(0.15)
    assert est.low > 0.05 and est.excludes_zero()


def test_seed_interval_uses_student_t():
    est = stats.seed_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)                     # t(0.975, 2 dof) * sd / sqrt(n)
    assert est.value == 2.0 and est.low == pytest.approx(2 - half) and est.high == pytest.approx(2 + half)
    single = stats.seed_interval([0.5])
    assert single.low is None and not single.excludes_zero()


def test_scaled_estimate_keeps_the_interval_ordered():
    est = stats.Estimate(0.1, 0.05, 0.2, 10).scaled(-100)
    assert (est.value, est.low, est.high) == (-10.0, -20.0, -5.0)


def test_scores_in_unit_range_are_resampled_by_image():
    # 3 corrupted copies per image: the share right per image is the unit resampled
    a = np.array([1, 2 / 3, 1 / 3, 0, 1] * 40)
    b = np.minimum(a + 1 / 3, 1.0)
    est = stats.paired_difference(a, b)
    assert est.value == pytest.approx(float((b - a).mean())) and est.excludes_zero()
    with pytest.raises(VitsamError, match=r"\[0, 1\]"):
        stats.paired_difference([0.5, 2.0], [0.5, 0.5])


def test_joint_resampling_of_four_vectors_on_the_same_images_is_tighter():
    rng = np.random.default_rng(2)
    hard = rng.random(3000) < 0.3                          # images every model gets wrong
    a1 = ~hard & (rng.random(3000) < 0.90)
    b1 = ~hard & (rng.random(3000) < 0.95)
    a2, b2 = a1.copy(), b1.copy()
    b2[:30] = ~b2[:30]
    joint = stats.difference_of_differences((a1, b1), (a2, b2), same_images=True)
    apart = stats.difference_of_differences((a1, b1), (a2, b2))
    assert joint.value == pytest.approx(apart.value)
    assert joint.high - joint.low < apart.high - apart.low


def test_bootstrap_is_drawn_in_chunks_with_the_same_result_for_a_seed():
    a = np.arange(1000) % 3 == 0
    b = np.arange(1000) % 2 == 0
    assert stats.paired_difference(a, b, seed=5) == stats.paired_difference(a, b, seed=5)
    assert stats.paired_difference(a, b, samples=250).n == 1000
