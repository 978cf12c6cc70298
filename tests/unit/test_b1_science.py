"""B1+ science on arrays (issue 14): units of a given map, plausibility, the closed forms of
TFL / AFI / DAM against their forward models. SA2RAGE and MP2RAGE-ME (one echo spacing per
readout train) are tested in test_sa2rage.py and test_mp2rage_readouts.py."""

from __future__ import annotations

import numpy as np
import pytest

from bids_agquant.qmri import b1 as qb1

B1 = np.linspace(0.6, 1.4, 33)


# ------------------------------------------------------------------ units
@pytest.mark.parametrize(("units", "scale"), [
    ("fraction", 1), ("a.u.", 1), ("percent", 100), ("%", 100), ("p.u.", 100),
    ("per-mille", 1000), ("‰", 1000), ("1/1000", 1000)])
def test_every_units_synonym(units, scale):
    decision = qb1.decide_b1_units(B1 * scale, units)
    assert decision.source == "sidecar" and not decision.guessed
    np.testing.assert_allclose(qb1.to_fraction(B1 * scale, decision), B1)


def test_degrees_need_the_nominal_flip():
    famp = 10 * 80 * B1
    decision = qb1.decide_b1_units(famp, "deg*10", nominal_flip_deg=80)
    np.testing.assert_allclose(qb1.to_fraction(famp, decision, 80), B1)
    degrees = qb1.decide_b1_units(60 * B1, "degrees", nominal_flip_deg=60)
    np.testing.assert_allclose(qb1.to_fraction(60 * B1, degrees, 60), B1)
    with pytest.raises(qb1.B1UnitsError, match="FlipAngle"):
        qb1.decide_b1_units(60 * B1, "degrees")


def test_override_beats_the_sidecar_and_the_values():
    decision = qb1.decide_b1_units(800 * B1, "percent", override="degrees-x10",
                                   nominal_flip_deg=80)
    assert decision.source == "override" and decision.units == "degrees-x10"
    with pytest.raises(qb1.B1UnitsError, match="--b1-units"):
        qb1.decide_b1_units(B1, override="kelvin")


def test_a_guess_is_a_warning_and_ambiguity_is_refused():
    decision = qb1.decide_b1_units(100 * B1)
    assert decision.guessed and decision.describe().startswith("WARNING:")
    assert "no Units" in decision.describe()
    assert qb1.decide_b1_units(B1).units == "fraction"
    with pytest.raises(qb1.B1UnitsError, match=r"per mille.*degrees-x10.*--b1-units"):
        qb1.decide_b1_units(850 * B1)
    with pytest.raises(qb1.B1UnitsError, match="'Hz'"):
        qb1.decide_b1_units(B1, "Hz")


def test_declared_units_contradicted_by_the_values_warn():
    assert qb1.decide_b1_units(B1, "percent").warnings
    assert qb1.decide_b1_units(100 * B1, "fraction").warnings


def test_plausibility_median_and_coverage():
    head = np.zeros((10, 10, 10), bool)
    head[1:9, 1:9, 1:9] = True
    b1 = np.where(head, 1.1, 0.0)
    assert qb1.b1_plausibility(b1, head).ok
    partial = b1.copy()
    partial[:, :, 1:3] = 0.0  # 2 of 8 slices of the head uncovered: 75 %
    found = qb1.b1_plausibility(partial, head)
    assert not found.ok and found.coverage == pytest.approx(0.75)
    assert "75.0 %" in found.problems()[0]
    high = qb1.b1_plausibility(b1 * 8, head)
    assert not high.ok and "median B1+ 8.8" in high.problems()[0]


# ------------------------------------------------------------------ closed forms
def test_tfl_is_famp_over_ten_flip():
    np.testing.assert_allclose(qb1.b1_from_tfl(10 * 80 * B1, 80), B1, rtol=1e-15)
    assert qb1.b1_from_tfl(np.array([np.nan, -5.0, 0.0]), 80).tolist() == [0, 0, 0]


def test_dam_is_exact_for_fully_relaxed_signals():
    s_a, s_2a = qb1.dam_signals(B1, 60.0, m0=700.0)
    np.testing.assert_allclose(qb1.b1_from_dam(s_a, s_2a, 60.0), B1, rtol=1e-12)


def test_dam_bias_when_tr_is_not_long():
    """With TR = T1 the steady state is not relaxed: S2α / (2 Sα) = cos α (1 - E cos α) /
    (1 - E cos 2α) < cos α, so the double-angle formula overestimates B1; the size is the
    method's, not the code's."""
    s_a, s_2a = qb1.dam_signals(B1, 60.0, t1_s=1.0, tr_s=1.0)
    bias = qb1.b1_from_dam(s_a, s_2a, 60.0) / B1 - 1
    assert np.all(bias > 0.01)  # detectable: the DRO uses fully relaxed DAM


def test_afi_inverts_the_yarnykh_relation_exactly():
    n, alpha = 5.0, np.deg2rad(60 * B1)
    r = (1 + n * np.cos(alpha)) / (n + np.cos(alpha))  # first-order AFI ratio
    np.testing.assert_allclose(qb1.b1_from_afi(np.ones_like(r), r, 0.02, 0.1, 60), B1,
                               rtol=1e-12)


@pytest.mark.parametrize(("t1", "bound"), [(0.8, 6e-3), (1.3, 3.6e-3), (2.0, 2.4e-3)])
def test_afi_against_its_steady_state(t1, bound):
    """Yarnykh's relation is first order in TR/T1: at TR 20/100 ms, 60°, B1 0.6-1.4 the error
    is at most 0.59 % at T1 0.8 s, 0.36 % at 1.3 s, 0.23 % at 2 s (measured), falling with
    T1 as TR/T1 does."""
    s1, s2 = qb1.afi_signals(t1, B1, 60.0, 0.02, 0.1, m0=500.0)
    assert np.abs(qb1.b1_from_afi(s1, s2, 0.02, 0.1, 60.0) / B1 - 1).max() < bound


def test_invalid_signals_give_zero():
    out = qb1.b1_from_afi(np.array([0.0, np.nan, 1.0]), np.array([1.0, 1.0, 50.0]), 0.02, 0.1,
                          60)
    assert out.tolist() == [0.0, 0.0, 0.0]  # zero, NaN, ratio far outside the model
    assert qb1.b1_from_dam(np.array([0.0]), np.array([1.0]), 60).tolist() == [0.0]
