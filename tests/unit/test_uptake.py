"""Tests for the uptake quantities, reproducing seeds-facts.md §1.11 (T1-T7, T12)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_agquant.qmri.uptake import (
    delta_r1,
    dose_normalised,
    gd_concentration_mM,
    gd_dose_umol_per_kg,
    mass_concentration_mg_per_L,
    percent_injected_dose_per_g,
    signal_enhancement_percent,
)

# The two AGuIX conventions (seeds-facts §1.5)
NANORAD = {"r1": 8.9, "n_gd": 10, "mass": 10_000.0}  # 000: 1 mM Gd = 1 g/L
NANOBRAINMETS = {"r1": 6.7, "n_gd": 15, "mass": 20_000.0}  # 002: 1 mM Gd = 4/3 g/L

REL = 1e-3  # the table prints 4 significant digits


def test_T1_percent_injected_dose_per_g():
    # 60 mg/L in a 60 kg patient given 100 mg/kg -> 0.001 %ID/g
    assert percent_injected_dose_per_g(60.0, 100.0, 60.0) == pytest.approx(0.001, rel=1e-12)


def test_T2_nanobrainmets_mass_factor():
    c = mass_concentration_mg_per_L(1.0, NANOBRAINMETS["mass"], NANOBRAINMETS["n_gd"])
    assert c == pytest.approx(1333.3, rel=REL)
    assert c / 1000.0 == pytest.approx(4.0 / 3.0, rel=1e-12)  # mg/ml


def test_T3_nanorad_mass_factor():
    c = mass_concentration_mg_per_L(1.0, NANORAD["mass"], NANORAD["n_gd"])
    assert c == pytest.approx(1000.0, rel=1e-12)  # 1 g/L
    # 8-63 uM Gd <-> 8-63 mg/L
    np.testing.assert_allclose(
        mass_concentration_mg_per_L(np.array([0.008, 0.063]), NANORAD["mass"], NANORAD["n_gd"]),
        [8.0, 63.0],
        rtol=1e-12,
    )


def test_T4_gd_dose():
    dose = gd_dose_umol_per_kg(100.0, NANORAD["mass"], NANORAD["n_gd"])
    assert dose == pytest.approx(100.0, rel=1e-12)  # = Dotarem 0.1 mmol/kg


def test_T5_mp2rage_convention():
    c_mM = gd_concentration_mM(1.0, NANOBRAINMETS["r1"])
    assert c_mM == pytest.approx(0.1493, rel=REL)
    c_mg_per_ml = (
        mass_concentration_mg_per_L(c_mM, NANOBRAINMETS["mass"], NANOBRAINMETS["n_gd"]) / 1000
    )
    assert c_mg_per_ml == pytest.approx(0.1990, rel=REL)


def test_T6_vfa_convention():
    c_mM = gd_concentration_mM(1.0, NANORAD["r1"])
    assert c_mM == pytest.approx(0.1124, rel=REL)
    c_mg_per_L = mass_concentration_mg_per_L(c_mM, NANORAD["mass"], NANORAD["n_gd"])
    assert c_mg_per_L == pytest.approx(112.4, rel=REL)


def test_T7_from_t1_maps():
    t1_pre, t1_post = 1.2, 1.0
    d_r1 = delta_r1(1.0 / t1_post, 1.0 / t1_pre)
    assert d_r1 == pytest.approx(0.1667, rel=REL)
    # 002 convention: mg/ml
    c002 = gd_concentration_mM(d_r1, NANOBRAINMETS["r1"])
    mg_per_ml = mass_concentration_mg_per_L(c002, NANOBRAINMETS["mass"], NANOBRAINMETS["n_gd"])
    assert mg_per_ml / 1000 == pytest.approx(0.03317, rel=REL)
    # 000 convention: mg/L
    c000 = gd_concentration_mM(d_r1, NANORAD["r1"])
    mg_per_L = mass_concentration_mg_per_L(c000, NANORAD["mass"], NANORAD["n_gd"])
    assert mg_per_L == pytest.approx(18.73, rel=REL)
    # combined convention factor (seeds-facts §1.5): (8.9 / 6.7) * (4/3) = 1.77
    assert mg_per_ml / mg_per_L == pytest.approx(1.77, rel=REL)


def test_T12_dose_normalisation_factors():
    doses = np.array([15.0, 30.0, 50.0, 75.0, 100.0])
    factors = dose_normalised(1.0, doses)
    np.testing.assert_allclose(factors, [6.667, 3.333, 2.0, 1.333, 1.0], rtol=REL)
    assert dose_normalised(10.0, 50.0, reference_dose_mg_per_kg=25.0) == pytest.approx(5.0)


# --------------------------------------------------------------------------- behaviour


def test_negative_concentrations_are_kept():
    d_r1 = delta_r1(np.array([0.9, 1.0, 1.1]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(d_r1, [-0.1, 0.0, 0.1], atol=1e-12)
    c = gd_concentration_mM(d_r1, 8.9)
    assert c[0] < 0
    np.testing.assert_allclose(c, d_r1 / 8.9)
    mass = mass_concentration_mg_per_L(c, 10_000.0, 10)
    assert mass[0] == pytest.approx(-0.1 / 8.9 * 1000)
    assert percent_injected_dose_per_g(mass, 100.0, 60.0)[0] < 0


def test_arrays_broadcast_and_nan_propagates():
    c = gd_concentration_mM(np.array([[1.0, np.nan]]), 6.7)
    assert c.shape == (1, 2)
    assert np.isnan(c[0, 1])


@pytest.mark.parametrize("r1", [0.0, -1.0, np.nan, np.inf, "x", None])
def test_bad_relaxivity_raises(r1):
    with pytest.raises(ValueError, match="r1"):
        gd_concentration_mM(1.0, r1)


def test_bad_particle_constants_raise():
    with pytest.raises(ValueError, match="molar_mass"):
        mass_concentration_mg_per_L(1.0, 0.0, 10)
    with pytest.raises(ValueError, match="gd_per_particle"):
        mass_concentration_mg_per_L(1.0, 10_000.0, 0)
    with pytest.raises(ValueError, match="gd_per_particle"):
        gd_dose_umol_per_kg(100.0, 10_000.0, -1)


@pytest.mark.parametrize("dose", [0.0, None, np.nan])
def test_placebo_or_missing_dose_gives_nan(dose):
    assert np.isnan(percent_injected_dose_per_g(60.0, dose, 60.0))
    assert np.isnan(dose_normalised(10.0, dose))


def test_missing_weight_gives_nan_and_negative_dose_raises():
    assert np.isnan(percent_injected_dose_per_g(60.0, 100.0, None))
    assert np.isnan(percent_injected_dose_per_g(60.0, 100.0, 0.0))
    with pytest.raises(ValueError, match="dose"):
        percent_injected_dose_per_g(60.0, -100.0, 60.0)
    with pytest.raises(ValueError, match="dose"):
        dose_normalised(1.0, -5.0)
    with pytest.raises(ValueError, match="reference"):
        dose_normalised(1.0, 50.0, reference_dose_mg_per_kg=0.0)


def test_percent_id_per_g_with_dose_array():
    out = percent_injected_dose_per_g(60.0, np.array([100.0, 0.0, 50.0]), 60.0)
    np.testing.assert_allclose(out, [0.001, np.nan, 0.002])


def test_signal_enhancement():
    post = np.array([150.0, 80.0, 10.0, 5.0, np.nan, 100.0])
    pre = np.array([100.0, 100.0, 0.0, -2.0, 100.0, np.nan])
    se = signal_enhancement_percent(post, pre)
    np.testing.assert_allclose(se[:2], [50.0, -20.0])  # negative SE kept
    assert np.all(np.isnan(se[2:]))
    # a noise-floor threshold rejects low pre-contrast signals
    se = signal_enhancement_percent(np.array([20.0, 200.0]), np.array([10.0, 100.0]), min_pre=15.0)
    assert np.isnan(se[0])
    assert se[1] == pytest.approx(100.0)
    # SE of the 000 Dotarem example: 182.9 % means S_post = 2.829 S_pre
    assert signal_enhancement_percent(282.9, 100.0) == pytest.approx(182.9)
