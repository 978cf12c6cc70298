"""Tests for the VFA (DESPOT1) T1 fit and the B1 map conversion."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from bids_agquant.qmri.b1 import b1_to_fraction
from bids_agquant.qmri.vfa import VFAFit, fit_vfa_linear, spgr_signal

FLIPS_DEG = [2.0, 5.0, 10.0, 15.0]
TR_S = 0.015


def _phantom(shape=(6, 7, 5), b1=None, seed=0):
    """Noise-free SPGR data over a T1 grid 0.3-4 s with arbitrary M0."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    t1 = np.linspace(0.3, 4.0, n).reshape(shape)
    m0 = rng.uniform(50.0, 5000.0, size=shape)
    b1_true = 1.0 if b1 is None else b1
    signals = spgr_signal(m0, t1, FLIPS_DEG, TR_S, b1=b1_true)
    return t1, m0, signals


# --------------------------------------------------------------------------- signal model


def test_spgr_signal_shapes_and_known_value():
    # scalar flip: plain broadcasting
    s = spgr_signal(1.0, 1.0, 90.0, 1e9)
    assert s == pytest.approx(1.0)  # full recovery at 90 deg gives M0
    # array of flips on the last axis
    t1 = np.full((3, 4), 1.0)
    out = spgr_signal(2.0, t1, FLIPS_DEG, TR_S)
    assert out.shape == (3, 4, 4)
    e1 = np.exp(-TR_S / 1.0)
    a = np.deg2rad(10.0)
    expected = 2.0 * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a))
    assert out[1, 2, 2] == pytest.approx(expected, rel=1e-12)
    # b1 scales the flip angle
    assert spgr_signal(1.0, 1.0, 10.0, TR_S, b1=0.5) == pytest.approx(
        spgr_signal(1.0, 1.0, 5.0, TR_S)
    )
    # Ernst angle maximises the signal
    ernst = np.rad2deg(np.arccos(e1))
    flips = np.array([ernst - 1, ernst, ernst + 1])
    sig = spgr_signal(1.0, 1.0, flips, TR_S)
    assert np.argmax(sig) == 1


def test_spgr_signal_rejects_2d_flips():
    with pytest.raises(ValueError, match="1-D"):
        spgr_signal(1.0, 1.0, np.ones((2, 2)), TR_S)


# --------------------------------------------------------------------------- VFA fit accuracy


def test_fit_noise_free_no_b1_is_exact():
    t1, m0, signals = _phantom()
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S)
    assert isinstance(fit, VFAFit)
    assert fit.valid.all()
    rel_err = np.abs(fit.t1_s / t1 - 1.0)
    assert rel_err.max() < 0.005
    np.testing.assert_allclose(fit.r1_per_s, 1.0 / t1, rtol=0.005)
    np.testing.assert_allclose(fit.m0, m0, rtol=0.005)


def test_fit_noise_free_with_b1_map_is_exact():
    shape = (6, 7, 5)
    rng = np.random.default_rng(1)
    b1 = rng.uniform(0.7, 1.3, size=shape)
    t1, m0, signals = _phantom(shape, b1=b1)
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=b1)
    assert fit.valid.all()
    assert np.abs(fit.t1_s / t1 - 1.0).max() < 0.005
    np.testing.assert_allclose(fit.m0, m0, rtol=0.005)


@pytest.mark.parametrize("b1_true", [0.7, 0.8, 1.2, 1.3])
def test_fit_without_b1_map_is_biased(b1_true):
    """Ignoring a B1 != 1 biases T1 by roughly 1/b1^2 (> 5 % here)."""
    shape = (4, 4, 4)
    t1, _, signals = _phantom(shape, b1=np.full(shape, b1_true))
    biased = fit_vfa_linear(signals, FLIPS_DEG, TR_S)
    bias = np.abs(biased.t1_s / t1 - 1.0)
    assert bias.min() > 0.05
    corrected = fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=np.full(shape, b1_true))
    assert np.abs(corrected.t1_s / t1 - 1.0).max() < 0.005


def test_fit_two_flip_angles_and_1d_input():
    t1 = np.array([0.5, 1.0, 2.0])
    sig = spgr_signal(1000.0, t1, [3.0, 20.0], TR_S)
    fit = fit_vfa_linear(sig, [3.0, 20.0], TR_S)
    np.testing.assert_allclose(fit.t1_s, t1, rtol=1e-4)
    assert fit.t1_s.shape == (3,)


def test_fit_integer_and_float32_signals_are_accepted():
    t1, m0, signals = _phantom((3, 3, 3))
    fit32 = fit_vfa_linear(signals.astype(np.float32), FLIPS_DEG, TR_S)
    assert np.abs(fit32.t1_s / t1 - 1.0).max() < 0.005
    fit_int = fit_vfa_linear(np.round(signals * 100).astype(np.int32), FLIPS_DEG, TR_S)
    assert fit_int.valid.all()


# --------------------------------------------------------------------------- outputs


def test_output_dtypes_and_shapes():
    shape = (5, 4, 3)
    _, _, signals = _phantom(shape)
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S)
    for arr in (fit.t1_s, fit.r1_per_s, fit.m0):
        assert arr.dtype == np.float32
        assert arr.shape == shape
    assert fit.valid.dtype == bool
    assert fit.valid.shape == shape


def test_chunking_gives_identical_results():
    _, _, signals = _phantom((7, 6, 5))
    full = fit_vfa_linear(signals, FLIPS_DEG, TR_S)
    chunked = fit_vfa_linear(signals, FLIPS_DEG, TR_S, chunk_voxels=17)
    for a, b in zip(full, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_input():
    _, _, signals = _phantom((6, 6, 6))
    sliced = signals[::2, :, 1:]
    ref = fit_vfa_linear(np.ascontiguousarray(sliced), FLIPS_DEG, TR_S)
    out = fit_vfa_linear(sliced, FLIPS_DEG, TR_S)
    np.testing.assert_array_equal(out.t1_s, ref.t1_s)


# --------------------------------------------------------------------------- invalid voxels


def test_mask_excludes_voxels_with_zero_not_nan():
    shape = (4, 5, 6)
    _, _, signals = _phantom(shape)
    mask = np.zeros(shape, dtype=bool)
    mask[1:3, 1:4, 2:5] = True
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S, mask=mask)
    np.testing.assert_array_equal(fit.valid, mask)
    for arr in (fit.t1_s, fit.r1_per_s, fit.m0):
        assert np.all(np.isfinite(arr))
        assert np.all(arr[~mask] == 0)
        assert np.all(arr[mask] > 0)


def test_invalid_voxels_are_flagged():
    shape = (2, 2, 3)
    _, _, signals = _phantom(shape)
    signals = signals.copy()
    sin_a = np.sin(np.deg2rad(FLIPS_DEG))
    # slope >= 1 (E1 >= 1, T1 negative or infinite): signal rising steeply with angle
    signals[0, 0, 0] = [1.0, 10.0, 100.0, 1000.0]
    # slope <= 0: y = S/sin(a) rising while x = S/tan(a) falls (OLS slope is about -0.96)
    signals[0, 0, 1] = np.array([10.0, 10.1, 10.2, 10.3]) * sin_a
    # all-zero signals (no information, sxx = 0)
    signals[0, 0, 2] = 0.0
    # non-finite signal
    signals[0, 1, 0, 2] = np.nan
    signals[0, 1, 1, 0] = np.inf
    b1 = np.ones(shape)
    b1[1, 0, 0] = 0.0  # b1 <= 0
    b1[1, 0, 1] = -0.5
    b1[1, 0, 2] = np.nan
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=b1)
    expected_valid = np.ones(shape, dtype=bool)
    expected_valid[0, 0, :] = False
    expected_valid[0, 1, 0:2] = False
    expected_valid[1, 0, :] = False
    np.testing.assert_array_equal(fit.valid, expected_valid)
    for arr in (fit.t1_s, fit.r1_per_s, fit.m0):
        assert np.all(np.isfinite(arr))
        assert np.all(arr[~expected_valid] == 0)
        assert np.all(arr[expected_valid] > 0)


def test_scalar_b1_is_broadcast():
    shape = (3, 3, 3)
    t1, _, signals = _phantom(shape, b1=np.full(shape, 0.9))
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=0.9)
    assert np.abs(fit.t1_s / t1 - 1).max() < 0.005


# --------------------------------------------------------------------------- argument errors


def test_value_errors():
    _, _, signals = _phantom((2, 2, 2))
    with pytest.raises(ValueError, match="at least 2 flip angles"):
        fit_vfa_linear(signals[..., :1], [5.0], TR_S)
    with pytest.raises(ValueError, match="distinct"):
        fit_vfa_linear(signals, [5.0, 5.0, 10.0, 15.0], TR_S)
    with pytest.raises(ValueError, match="last axis"):
        fit_vfa_linear(signals, [2.0, 5.0, 10.0], TR_S)
    with pytest.raises(ValueError, match=r"\(0, 180\)"):
        fit_vfa_linear(signals, [0.0, 5.0, 10.0, 15.0], TR_S)
    with pytest.raises(ValueError, match="tr_s"):
        fit_vfa_linear(signals, FLIPS_DEG, 0.0)
    with pytest.raises(ValueError, match="b1 map shape"):
        fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask shape"):
        fit_vfa_linear(signals, FLIPS_DEG, TR_S, mask=np.ones((2, 2, 3), dtype=bool))
    with pytest.raises(ValueError, match="1-D"):
        fit_vfa_linear(signals, [[2.0, 5.0], [10.0, 15.0]], TR_S)


# --------------------------------------------------------------------------- memory


def test_whole_brain_volume_memory_is_bounded():
    """A 1 mm brain grid (197x233x189) with 4 flips fits in well under 2 GB."""
    shape = (197, 233, 189)
    signals = np.empty(shape + (4,), dtype=np.float32)
    per_flip = spgr_signal(1000.0, 1.2, FLIPS_DEG, TR_S)
    signals[...] = per_flip.astype(np.float32)
    input_mb = signals.nbytes / 2**20
    tracemalloc.start()
    try:
        fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak_mb = peak / 2**20
    # outputs: 3 float32 maps + 1 bool map + index array ~ 170 MB; chunk temporaries small
    assert peak_mb < 600, f"peak {peak_mb:.0f} MB (input {input_mb:.0f} MB)"
    assert fit.valid.all()
    assert fit.t1_s[100, 100, 100] == pytest.approx(1.2, rel=1e-3)


# --------------------------------------------------------------------------- B1 units


@pytest.mark.parametrize("units", ["percent", "Percent", "%", "pct", " PCT "])
def test_b1_percent_units(units):
    out, decision = b1_to_fraction(np.array([90.0, 100.0, 110.0]), units)
    np.testing.assert_allclose(out, [0.9, 1.0, 1.1])
    assert "percent" in decision
    assert "WARNING" not in decision


@pytest.mark.parametrize("units", ["fraction", "ratio", "a.u.", "1", "Fraction"])
def test_b1_fraction_units(units):
    out, decision = b1_to_fraction(np.array([0.9, 1.0, 1.1]), units)
    np.testing.assert_allclose(out, [0.9, 1.0, 1.1])
    assert "fraction" in decision
    assert "WARNING" not in decision


def test_b1_data_driven_decision():
    out, decision = b1_to_fraction(np.array([[95.0, 101.0], [0.0, 105.0]]))
    np.testing.assert_allclose(out, [[0.95, 1.01], [0.0, 1.05]])
    assert "percent" in decision and "no Units" in decision
    out, decision = b1_to_fraction(np.array([0.95, 1.01, 1.05]), units="n/a")
    np.testing.assert_allclose(out, [0.95, 1.01, 1.05])
    assert "fraction" in decision and "unrecognised" in decision


def test_b1_nonfinite_set_to_zero():
    out, decision = b1_to_fraction(np.array([np.nan, 100.0, np.inf, -np.inf, 98.0]), "%")
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 0.0, 0.98])
    assert np.all(np.isfinite(out))
    assert "3 non-finite" in decision


def test_b1_warnings():
    _, decision = b1_to_fraction(np.array([0.9, 1.0]), "percent")
    assert "WARNING" in decision  # declared percent but looks like a fraction
    _, decision = b1_to_fraction(np.array([800.0, 810.0]))  # Siemens x10 degrees
    assert "WARNING" in decision and "tfl_b1map" in decision
    out, decision = b1_to_fraction(np.array([np.nan, 0.0]))
    assert "WARNING" in decision
    np.testing.assert_array_equal(out, [0.0, 0.0])


def test_b1_fraction_feeds_vfa_fit():
    shape = (3, 3, 2)
    b1_percent = np.full(shape, 80.0)
    t1, _, signals = _phantom(shape, b1=b1_percent / 100)
    b1_frac, _ = b1_to_fraction(b1_percent, "percent")
    fit = fit_vfa_linear(signals, FLIPS_DEG, TR_S, b1=b1_frac)
    assert np.abs(fit.t1_s / t1 - 1).max() < 0.005
