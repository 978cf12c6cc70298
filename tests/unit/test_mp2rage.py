"""Tests for MP2RAGE T1 mapping: signal model, UNI, lookup fit (with B1) and INV1 sign."""

from __future__ import annotations

import numpy as np
import pytest

from bids_agquant.qmri.mp2rage import (
    MP2RAGEFit,
    MP2RAGEProtocol,
    MP2RAGETimingError,
    complex_signal,
    fit_t1_mp2rage,
    monotonic_branch,
    mp2rage_signals,
    phase_to_radians,
    recover_inv1_sign,
    uni_from_signals,
    uni_from_unit1,
)

#: Realistic 3 T protocol with partial Fourier in the slab direction (176 x 6/8 -> [44, 88]).
P3T = MP2RAGEProtocol(
    repetition_time_preparation_s=5.0,
    repetition_time_excitation_s=0.007,
    inversion_times_s=(0.7, 2.5),
    flip_angles_deg=(4.0, 5.0),
    shots_before=44,
    shots_after=88,
)
#: The bids-examples qmri_mp2rage 7 T protocol (NumberShots 159 -> 79 / 80).
P7T = MP2RAGEProtocol.from_number_shots(
    159,
    repetition_time_preparation_s=5.5,
    repetition_time_excitation_s=0.0062,
    inversion_times_s=(0.8, 2.7),
    flip_angles_deg=(5.0, 7.0),
)


def _uni(t1, protocol, b1=1.0):
    """Noise-free float64 UNI of the model (no float32 rounding)."""
    s1, s2 = mp2rage_signals(t1, protocol, b1)
    return s1 * s2 / (s1 * s1 + s2 * s2)


def _branch_grid(protocol, t1_lo=0.1, t1_hi=4.0, b1_lo=0.8, b1_hi=1.2, margin=1.01):
    """Dense (T1, B1) grid and the points inside the monotonic branch (with a margin)."""
    t1 = np.geomspace(t1_lo, t1_hi, 1201)
    b1 = np.linspace(b1_lo, b1_hi, 161)  # off the 0.01 table rows too
    t1_g, b1_g = np.meshgrid(t1, b1, indexing="ij")
    ends = [monotonic_branch(protocol, b) for b in b1]
    short = np.array([e.t1_short_s for e in ends])
    long_ = np.array([e.t1_long_s for e in ends])
    inside = (t1_g >= short * margin) & (t1_g <= long_ / margin)
    return t1_g, b1_g, inside


# ------------------------------------------------------------------------------- signal model


def _simulate(t1, protocol, b1, n_cycles=400, tol=1e-15):
    """Independent discrete-event simulation: every inversion, pulse and relaxation interval
    stepped one by one in absolute time, over inversion cycles until the steady state."""
    p = protocol
    tau = p.repetition_time_excitation_s
    n_b, n_a = p.shots_before, p.shots_after
    events = []  # (time, kind, train)
    for k, ti in enumerate(p.inversion_times_s):
        for j in range(n_b + n_a):
            events.append((ti + (j - n_b) * tau, "pulse", k, j == n_b))
    events.sort(key=lambda e: e[0])
    t1 = np.asarray(t1, dtype=np.float64)
    b1 = np.asarray(b1, dtype=np.float64)
    mz = np.ones(np.broadcast(t1, b1).shape)
    sig = [np.zeros_like(mz), np.zeros_like(mz)]
    for _ in range(n_cycles):
        start = mz.copy()
        mz = -p.inversion_efficiency * mz  # inversion at t = 0
        now = 0.0
        for time, _kind, train, centre in events:
            mz = 1.0 + (mz - 1.0) * np.exp(-(time - now) / t1)
            now = time
            alpha = np.deg2rad(p.flip_angles_deg[train]) * b1
            if centre:
                sig[train] = mz * np.sin(alpha)
            mz = mz * np.cos(alpha)
        mz = 1.0 + (mz - 1.0) * np.exp(-(p.repetition_time_preparation_s - now) / t1)
        if np.max(np.abs(mz - start)) < tol:
            break
    else:
        raise AssertionError("simulation did not converge")
    return sig[0], sig[1]


@pytest.mark.parametrize(
    "protocol",
    [P3T, P7T, MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 66, 66)],
    ids=["3T-44-88", "7T-79-80", "3T-66-66"],
)
def test_closed_form_matches_discrete_event_simulation(protocol):
    t1 = np.array([0.05, 0.2, 0.3, 0.83, 1.1, 1.33, 2.0, 4.2, 6.0])[:, None]
    b1 = np.array([0.7, 1.0, 1.23])[None, :]
    s1, s2 = mp2rage_signals(t1, protocol, b1)
    r1, r2 = _simulate(t1, protocol, b1)
    scale = np.sin(np.deg2rad(max(protocol.flip_angles_deg)) * b1)
    np.testing.assert_allclose(s1, r1, rtol=1e-6, atol=1e-9 * scale.max())
    np.testing.assert_allclose(s2, r2, rtol=1e-6, atol=1e-9 * scale.max())
    # the signals are signed: short T1 recovers before TI1, long T1 does not
    assert np.all(s1[0] > 0) and np.all(s1[-2] < 0)


def test_closed_form_matches_simulation_symmetric_shots_and_m0():
    sym = MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 66, 66, inversion_efficiency=0.9)
    t1 = np.geomspace(0.1, 5.0, 7)
    s1, s2 = mp2rage_signals(t1, sym, b1=0.85, m0=250.0)
    r1, r2 = _simulate(t1, sym, 0.85)
    np.testing.assert_allclose(s1, 250.0 * r1, rtol=1e-6)
    np.testing.assert_allclose(s2, 250.0 * r2, rtol=1e-6)
    # [44, 88] and [66, 66] differ (the k-space centre sits elsewhere in the train)
    a1, _ = mp2rage_signals(t1, P3T, b1=0.85)
    assert np.max(np.abs(a1 - s1 / 250.0) / np.abs(s1 / 250.0)) > 1e-2


def test_signals_broadcast_and_invalid_t1():
    s1, s2 = mp2rage_signals(np.full((2, 3), 1.0), P3T, b1=np.ones((1, 3)), m0=np.ones((2, 1)))
    assert s1.shape == s2.shape == (2, 3)
    assert s1.dtype == np.float64
    bad1, bad2 = mp2rage_signals(np.array([0.0, -1.0, np.nan]), P3T)
    assert np.all(np.isnan(bad1)) and np.all(np.isnan(bad2))


# ------------------------------------------------------------------------------- protocol


def test_number_shots_parsing_and_metadata_round_trip():
    p = MP2RAGEProtocol.from_number_shots(
        159,
        repetition_time_preparation_s=5.5,
        repetition_time_excitation_s=0.0062,
        inversion_times_s=[0.8, 2.7],
        flip_angles_deg=[5, 7],
    )
    assert (p.shots_before, p.shots_after) == (79, 80)
    assert isinstance(p.inversion_times_s, tuple) and isinstance(p.flip_angles_deg[0], float)
    kw = dict(
        repetition_time_preparation_s=5.0,
        repetition_time_excitation_s=0.007,
        inversion_times_s=(0.7, 2.5),
        flip_angles_deg=(4, 5),
    )
    literal = MP2RAGEProtocol.from_number_shots([44, 88], **kw)
    assert (literal.shots_before, literal.shots_after) == (44, 88)
    # [a, a] is taken literally, never as a total (the qMRLab trap)
    pair = MP2RAGEProtocol.from_number_shots([60, 60], **kw)
    assert (pair.shots_before, pair.shots_after) == (60, 60)
    assert MP2RAGEProtocol.from_number_shots(120.0, **kw) == pair
    meta = literal.as_metadata()
    assert meta["NumberShots"] == [44, 88]
    assert meta["InversionTime"] == [0.7, 2.5] and meta["FlipAngle"] == [4.0, 5.0]
    assert meta["InversionEfficiency"] == pytest.approx(0.96)
    assert MP2RAGEProtocol.from_metadata(meta) == literal
    assert hash(MP2RAGEProtocol.from_metadata(meta)) == hash(literal)
    with pytest.raises(MP2RAGETimingError, match="NumberShots"):
        MP2RAGEProtocol.from_number_shots([1, 2, 3], **kw)
    with pytest.raises(MP2RAGETimingError, match="integer"):
        MP2RAGEProtocol.from_number_shots(44.5, **kw)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"inversion_times_s": (0.2, 2.5)}, r"first readout train would start before"),
        ({"inversion_times_s": (0.7, 1.2)}, r"two readout trains overlap"),
        ({"repetition_time_preparation_s": 3.0}, r"ends after the next inversion"),
        ({"repetition_time_excitation_s": 0.0}, r"RepetitionTimeExcitation must be a positive"),
        ({"repetition_time_preparation_s": -5.0}, r"RepetitionTimePreparation"),
        ({"inversion_times_s": (0.7, np.nan)}, r"InversionTime\[1\]"),
        ({"flip_angles_deg": (4.0, 180.0)}, r"FlipAngle\[1\] must be in \(0, 180\)"),
        ({"flip_angles_deg": (0.0, 5.0)}, r"FlipAngle\[0\]"),
        ({"flip_angles_deg": (4.0, 5.0, 6.0)}, r"FlipAngle must hold exactly two"),
        ({"inversion_efficiency": 1.2}, r"InversionEfficiency must be in \(0, 1\]"),
        ({"inversion_efficiency": 0.0}, r"InversionEfficiency"),
        ({"shots_before": 0}, r"shots_before"),
        ({"shots_after": 2.5}, r"shots_after"),
        ({"shots_after": True}, r"shots_after"),
    ],
)
def test_invalid_or_infeasible_protocol_raises(changes, pattern):
    kw = dict(
        repetition_time_preparation_s=5.0,
        repetition_time_excitation_s=0.007,
        inversion_times_s=(0.7, 2.5),
        flip_angles_deg=(4.0, 5.0),
        shots_before=44,
        shots_after=88,
    )
    kw.update(changes)
    with pytest.raises(MP2RAGETimingError, match=pattern) as info:
        MP2RAGEProtocol(**kw)
    assert isinstance(info.value, ValueError)


def test_timing_error_message_names_values():
    with pytest.raises(MP2RAGETimingError) as info:
        MP2RAGEProtocol(5.0, 0.007, (0.2, 2.5), (4.0, 5.0), 44, 88)
    msg = str(info.value)
    assert "TI1 - shots_before * tau" in msg and "0.2 - 44 * 0.007" in msg and "-0.108" in msg
    # exactly touching trains are feasible (no spurious rounding failure)
    MP2RAGEProtocol(5.0, 0.01, (0.44, 0.44 + 1.32), (4.0, 5.0), 44, 88)


# ------------------------------------------------------------------------------- UNI images


def test_uni_from_complex_with_background_phase_equals_real_uni():
    rng = np.random.default_rng(3)
    t1 = rng.uniform(0.2, 4.0, size=(6, 5, 4))
    b1 = rng.uniform(0.8, 1.2, size=t1.shape)
    m0 = rng.uniform(100.0, 2000.0, size=t1.shape)
    s1, s2 = mp2rage_signals(t1, P3T, b1, m0)
    assert (s1 < 0).any() and (s1 > 0).any()
    reference = uni_from_signals(s1, s2)
    np.testing.assert_allclose(reference, _uni(t1, P3T, b1), atol=1e-7)
    # magnitude + phase as a scanner stores them: arbitrary common (coil / B0) phase, plus pi
    # on INV1 where it is negative
    background = rng.uniform(-np.pi, np.pi, size=t1.shape)
    phase1 = np.angle(np.exp(1j * (background + np.where(s1 < 0, np.pi, 0.0))))
    phase2 = np.angle(np.exp(1j * background))
    c1 = complex_signal(np.abs(s1), phase1)
    c2 = complex_signal(np.abs(s2), phase2)
    assert c1.dtype == np.complex128
    np.testing.assert_allclose(uni_from_signals(c1, c2), reference, atol=1e-6)
    # the same through the Siemens 12-bit phase encoding
    enc1 = np.round(phase1 * 4096 / np.pi).clip(-4096, 4095)
    enc2 = np.round(phase2 * 4096 / np.pi).clip(-4096, 4095)
    rad1, _ = phase_to_radians(enc1)
    rad2, _ = phase_to_radians(enc2)
    c1 = complex_signal(np.abs(s1).astype(np.float32), rad1)
    assert c1.dtype == np.complex64
    uni = uni_from_signals(c1, complex_signal(np.abs(s2).astype(np.float32), rad2))
    np.testing.assert_allclose(uni, reference, atol=2e-3)
    # magnitude-only data lose the sign (the reason for recover_inv1_sign)
    assert np.all(uni_from_signals(np.abs(s1), np.abs(s2)) >= 0)


def test_uni_from_signals_edge_cases():
    s1 = np.array([0.0, np.nan, 1.0, 3.0, -2.0, 1e-30])
    s2 = np.array([0.0, 1.0, np.inf, 3.0, 2.0, 1e-30])
    uni = uni_from_signals(s1, s2)
    assert uni.dtype == np.float32
    np.testing.assert_allclose(uni, [0.0, 0.0, 0.0, 0.5, -0.5, 0.5], atol=1e-7)
    with pytest.raises(ValueError, match="shapes differ"):
        uni_from_signals(np.ones(3), np.ones(4))


def test_unit1_round_trip_and_scale_checks():
    uni = np.linspace(-0.5, 0.5, 4096)
    unit1 = np.round((uni + 0.5) * 4095.0)
    back = uni_from_unit1(unit1.astype(np.uint16))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, uni, atol=0.5 / 4095 + 1e-7)
    assert back[0] == pytest.approx(-0.5) and back[-1] == pytest.approx(0.5)
    with_nan = uni_from_unit1(np.array([0.0, np.nan, 4095.0]))
    assert np.isnan(with_nan[1])
    with pytest.raises(ValueError, match="0-4095"):
        uni_from_unit1(np.array([0.0, 5000.0]))
    with pytest.raises(ValueError, match="0-4095"):
        uni_from_unit1(np.array([-100.0, 2000.0]))
    with pytest.raises(ValueError, match="UNI image already"):
        uni_from_unit1(np.array([-0.4, 0.3]))
    # the fit refuses an unconverted UNIT1 image instead of returning garbage
    with pytest.raises(ValueError, match="uni_from_unit1"):
        fit_t1_mp2rage(unit1.reshape(64, 64), P3T)


@pytest.mark.parametrize(
    ("values", "units", "factor", "word"),
    [
        ([-3.1, 0.0, 3.14], None, 1.0, "radians in [-pi, pi]"),
        ([0.0, 3.0, 6.28], "arbitrary", 1.0, "radians in [0, 2 pi]"),
        ([-4096.0, 0.0, 4094.0], None, np.pi / 4096, "signed 12-bit"),
        ([0.0, 2048.0, 4095.0], None, 2 * np.pi / 4096, "unsigned 12-bit"),
        ([0.0, 2.0, 6.0], "rad", 1.0, "radians (sidecar"),
        ([-180.0, 90.0], "degrees", np.pi / 180, "degrees"),
    ],
)
def test_phase_units_detection(values, units, factor, word):
    out, decision = phase_to_radians(np.array(values), units)
    np.testing.assert_allclose(out, np.array(values) * factor, rtol=1e-6)
    assert word in decision


def test_phase_units_errors():
    with pytest.raises(ValueError, match="cannot tell"):
        phase_to_radians(np.array([0.0, 10000.0]))
    with pytest.raises(ValueError, match="exceed 2 pi"):
        phase_to_radians(np.array([0.0, 4000.0]), "rad")
    with pytest.raises(ValueError, match="no finite"):
        phase_to_radians(np.array([np.nan]))


# ------------------------------------------------------------------------------- T1 lookup


@pytest.mark.parametrize("protocol", [P3T, P7T], ids=["3T-44-88", "7T-159"])
def test_t1_recovery_with_b1_map_dense_grid(protocol):
    t1, b1, inside = _branch_grid(protocol)
    # the branch covers almost the whole box; the rest is physically ambiguous
    assert inside.mean() > 0.8
    fit = fit_t1_mp2rage(_uni(t1, protocol, b1), protocol, b1=b1)
    assert fit.valid[inside].all()
    rel = np.abs(fit.t1_s[inside] / t1[inside] - 1.0)
    assert rel.max() < 5e-3
    # away from the flat ends of UNI(T1) (T1 >= 0.2 s) it is float32-limited
    well = inside & (t1 >= 0.2)
    assert np.abs(fit.t1_s[well] / t1[well] - 1.0).max() < 5e-4
    np.testing.assert_allclose(fit.r1_per_s[inside], 1.0 / fit.t1_s[inside], rtol=1e-6)


@pytest.mark.parametrize("protocol", [P3T, P7T], ids=["3T-44-88", "7T-159"])
def test_t1_recovery_without_b1(protocol):
    ends = monotonic_branch(protocol)
    t1 = np.geomspace(max(0.1, 1.01 * ends.t1_short_s), min(4.0, ends.t1_long_s / 1.01), 20001)
    fit = fit_t1_mp2rage(_uni(t1, protocol), protocol)
    assert isinstance(fit, MP2RAGEFit)
    assert fit.valid.all()
    assert np.abs(fit.t1_s / t1 - 1.0).max() < 5e-3
    well = t1 >= 0.2
    assert np.abs(fit.t1_s[well] / t1[well] - 1.0).max() < 5e-4


def test_short_t1_lesions_are_recovered():
    # post-contrast lesions (0.2-0.5 s): where qMRLab returns 4 s and pymp2rage is biased
    t1 = np.array([0.2, 0.25, 0.3, 0.39, 0.5])
    b1 = np.array([0.85, 1.0, 1.15, 0.9, 1.1])
    fit = fit_t1_mp2rage(_uni(t1, P3T, b1), P3T, b1=b1)
    assert fit.valid.all()
    np.testing.assert_allclose(fit.t1_s, t1, rtol=2e-4)


def test_partial_fourier_shots_matter():
    t1 = np.geomspace(0.25, 3.5, 200)
    uni = _uni(t1, P3T)
    exact = fit_t1_mp2rage(uni, P3T)
    assert exact.valid.all()
    assert np.abs(exact.t1_s / t1 - 1).max() < 1e-3
    symmetric = MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 66, 66)
    wrong = fit_t1_mp2rage(uni, symmetric)
    ok = wrong.valid
    assert ok.mean() > 0.9
    assert np.abs(wrong.t1_s[ok] / t1[ok] - 1).max() > 5e-3


def test_inversion_efficiency_is_honoured():
    p90 = MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 44, 88, inversion_efficiency=0.90)
    t1 = np.geomspace(0.25, 3.5, 200)
    b1 = np.linspace(0.85, 1.15, t1.size)
    uni = _uni(t1, p90, b1)
    right = fit_t1_mp2rage(uni, p90, b1=b1)
    assert right.valid.all()
    assert np.abs(right.t1_s / t1 - 1).max() < 1e-3
    wrong = fit_t1_mp2rage(uni, P3T, b1=b1)
    ok = wrong.valid
    assert np.abs(wrong.t1_s[ok] / t1[ok] - 1).max() > 5e-3


def test_b1_correction_matters_and_b1_range():
    t1 = np.full(5, 1.0)
    b1 = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    uni = _uni(t1, P3T, b1)
    with_b1 = fit_t1_mp2rage(uni, P3T, b1=b1)
    np.testing.assert_allclose(with_b1.t1_s, t1, rtol=2e-4)
    without = fit_t1_mp2rage(uni, P3T)
    assert np.abs(without.t1_s[[0, 4]] - 1.0).min() > 0.02
    # B1 outside the table range or non-finite -> invalid (never clamped)
    b1_bad = np.array([0.3, np.nan, 1.0, 1.7, np.inf])
    out = fit_t1_mp2rage(uni, P3T, b1=b1_bad)
    np.testing.assert_array_equal(out.valid, [False, False, True, False, False])
    assert np.all(out.t1_s[~out.valid] == 0) and np.all(out.r1_per_s[~out.valid] == 0)
    # a wider b1_range accepts them
    wide = fit_t1_mp2rage(_uni(1.0, P3T, 0.3) + 0 * t1, P3T, b1=np.full(5, 0.3), b1_range=(0.2, 2))
    np.testing.assert_allclose(wide.t1_s, 1.0, rtol=5e-4)


def test_outside_branch_is_invalid_not_clamped():
    ends = monotonic_branch(P7T)
    assert ends.t1_long_s == pytest.approx(5.0)  # the 7 T branch reaches the table end
    u_beyond = _uni(np.array([6.0, 8.0]), P7T)
    assert np.all(u_beyond < ends.uni_min)
    uni = np.concatenate([u_beyond, [ends.uni_max + 1e-3, 0.5, -0.5, 0.7, -0.9]])
    fit = fit_t1_mp2rage(uni, P7T)
    assert not fit.valid.any()
    assert np.all(fit.t1_s == 0) and np.all(fit.r1_per_s == 0)
    # T1 just inside the ends is valid
    inside = fit_t1_mp2rage(_uni(np.array([4.9, 0.18]), P7T), P7T)
    assert inside.valid.all()
    np.testing.assert_allclose(inside.t1_s, [4.9, 0.18], rtol=2e-3)
    # 3 T: below the UNI maximum (T1 < 0.105 s) UNI is double-valued; T1 = 0.06 s has the
    # UNI of a T1 on the branch, which is what the lookup returns (physically ambiguous)
    short = monotonic_branch(P3T)
    assert short.t1_short_s == pytest.approx(0.105, abs=0.003)
    twin = fit_t1_mp2rage(_uni(np.array([0.06]), P3T), P3T)
    assert twin.valid[0] and twin.t1_s[0] > short.t1_short_s


@pytest.mark.parametrize("b1", [0.8, 0.9, 1.0, 1.17])
def test_monotonic_branch_matches_fine_grid(b1):
    t1 = np.geomspace(0.05, 5.0, 200001)
    uni = _uni(t1, P3T, b1)
    i_max, i_min = np.argmax(uni), np.argmin(uni)
    branch = monotonic_branch(P3T, b1)
    assert branch.t1_short_s == pytest.approx(t1[i_max], rel=1e-3)
    assert branch.t1_long_s == pytest.approx(t1[i_min], rel=1e-3)
    assert branch.uni_max == pytest.approx(uni[i_max], abs=1e-9)
    assert branch.uni_min == pytest.approx(uni[i_min], abs=1e-9)
    assert np.all(np.diff(uni[i_max : i_min + 1]) < 0)
    with pytest.raises(ValueError, match="b1"):
        monotonic_branch(P3T, 0.0)


def test_shapes_masks_and_invalid_inputs():
    rng = np.random.default_rng(7)
    shape = (7, 9, 5)
    t1 = rng.uniform(0.3, 3.0, size=shape)
    b1 = rng.uniform(0.85, 1.15, size=shape)
    uni = _uni(t1, P3T, b1).astype(np.float32)
    mask = rng.random(shape) > 0.3
    uni[0, 0, 0] = np.nan
    mask[0, 0, 0] = True
    fit = fit_t1_mp2rage(uni, P3T, b1=b1, mask=mask, chunk_voxels=37)
    assert fit.t1_s.shape == fit.r1_per_s.shape == fit.valid.shape == shape
    assert fit.t1_s.dtype == np.float32 and fit.r1_per_s.dtype == np.float32
    assert fit.valid.dtype == bool
    np.testing.assert_array_equal(fit.valid, mask & np.isfinite(uni))
    v = fit.valid
    assert np.all(np.isfinite(fit.t1_s)) and np.all(fit.t1_s[v] > 0)
    assert np.all(fit.t1_s[~v] == 0) and np.all(fit.r1_per_s[~v] == 0)
    np.testing.assert_allclose(fit.t1_s[v], t1[v], rtol=5e-4)
    # chunking and memory layout (nibabel arrays are Fortran-ordered) do not change the result
    again = fit_t1_mp2rage(uni, P3T, b1=b1, mask=mask)
    np.testing.assert_array_equal(again.t1_s, fit.t1_s)
    fortran = fit_t1_mp2rage(np.asfortranarray(uni), P3T, b1=np.asfortranarray(b1), mask=mask)
    np.testing.assert_array_equal(fortran.t1_s, fit.t1_s)
    np.testing.assert_array_equal(fortran.valid, fit.valid)
    assert fortran.t1_s.flags.f_contiguous
    mixed = fit_t1_mp2rage(uni, P3T, b1=np.asfortranarray(b1), mask=np.asfortranarray(mask))
    np.testing.assert_array_equal(mixed.t1_s, fit.t1_s)
    s1, s2 = mp2rage_signals(t1, P3T, b1)
    np.testing.assert_array_equal(
        uni_from_signals(np.asfortranarray(s1), s2), uni_from_signals(s1, s2)
    )
    # 1-D input, no b1, no mask
    t1_line = np.linspace(0.3, 3.0, 11)
    line = fit_t1_mp2rage(_uni(t1_line, P3T), P3T)
    assert line.t1_s.shape == (11,)
    np.testing.assert_allclose(line.t1_s, t1_line, rtol=5e-4)
    # scalar b1 is broadcast
    scalar = fit_t1_mp2rage(_uni(t1_line, P3T, 0.9), P3T, b1=0.9)
    np.testing.assert_allclose(scalar.t1_s, t1_line, rtol=5e-4)
    with pytest.raises(ValueError, match="mask shape"):
        fit_t1_mp2rage(uni, P3T, mask=np.ones((7, 9), bool))
    with pytest.raises(ValueError, match="b1 map shape"):
        fit_t1_mp2rage(uni, P3T, b1=np.ones((9, 7, 5)))
    with pytest.raises(ValueError, match="t1_range_s"):
        fit_t1_mp2rage(uni, P3T, t1_range_s=(1.0, 0.5))


def test_t1_range_is_honoured():
    # with a table ending at 3 s, T1 = 3.5 s is outside the branch -> invalid, not 3 s
    fit = fit_t1_mp2rage(_uni(np.array([2.5, 3.5]), P3T), P3T, t1_range_s=(0.05, 3.0))
    np.testing.assert_array_equal(fit.valid, [True, False])
    assert fit.t1_s[0] == pytest.approx(2.5, rel=5e-4)


# ------------------------------------------------------------------------- INV1 sign recovery


def _phantom(shape=(40, 48, 40), voxel_mm=2.0):
    """Piecewise-constant head phantom: WM core with folded GM/WM border, GM ribbon, CSF rim,
    ventricles, deep GM nuclei and four short-T1 'lesions'; smooth receive field and B1."""
    axes = [(np.arange(n) - (n - 1) / 2) * voxel_mm for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((x / 34.0) ** 2 + (y / 42.0) ** 2 + (z / 34.0) ** 2)
    theta = np.arctan2(y, x)
    phi = np.arctan2(z, np.hypot(x, y))
    mask = r <= 1.0
    label = np.zeros(shape, dtype=int)  # 1 WM, 2 GM, 3 CSF, 4 lesion
    label[mask] = 3
    label[mask & (r < 0.92)] = 2
    label[mask & (r < 0.72 + 0.08 * np.sin(3 * theta) * np.cos(2 * phi))] = 1
    for cx in (-8.0, 8.0):
        label[((x - cx) / 4) ** 2 + ((y - 4) / 10) ** 2 + (z / 5) ** 2 <= 1] = 3
        label[((x - 1.6 * cx) / 5) ** 2 + ((y + 8) / 6) ** 2 + ((z - 4) / 5) ** 2 <= 1] = 2
    t1 = np.choose(label, [1.0, 0.83, 1.33, 4.2, 0.0])  # background: M0 = 0
    pd = np.choose(label, [0.0, 0.69, 0.80, 1.0, 0.85])
    lesion = np.zeros(shape, dtype=int)
    spheres = [((-12, -20, -6), 5, 0.25), ((14, 14, 4), 5, 0.3), ((0, 26, -10), 4, 0.4)]
    spheres.append(((-16, 6, 12), 6, 0.5))
    for k, (centre, radius, t1_lesion) in enumerate(spheres, start=1):
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
        label[inside], t1[inside], pd[inside], lesion[inside] = 4, t1_lesion, 0.85, k
    u1, u2, u3 = x / 34.0, y / 42.0, z / 34.0
    field = 1 + 0.15 * np.clip(
        0.6 * u1 + 0.5 * u2 * u3 + 0.4 * np.sin(2 * u3 + 0.3) + 0.3 * u1 * u2, -1, 1
    )
    b1 = np.clip(1.2 - 0.4 * np.clip(r, 0, 1) ** 2 + 0.05 * u2, 0.8, 1.2)
    return {
        "mask": mask,
        "label": label,
        "lesion": lesion,
        "t1": t1,
        "m0": 1000 * pd * field,
        "b1": b1,
    }


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.mark.parametrize(("noise", "min_right"), [(0.0, 0.999), (0.01, 0.99)])
def test_inv1_sign_recovery_from_magnitudes(phantom, noise, min_right):
    ph = phantom
    mask = ph["mask"]
    s1, s2 = mp2rage_signals(ph["t1"], P3T, ph["b1"], ph["m0"])
    # truth: INV1 positive in WM and lesions, negative in GM and CSF
    assert (s1[mask] > 0).mean() > 0.2 and (s1[mask] < 0).mean() > 0.3
    rng = np.random.default_rng(11)
    sd = noise * np.abs(s2[mask]).mean()  # noise = 1 % of mean INV2 (SNR 100)
    mag1 = np.abs(s1 + sd * (rng.standard_normal(s1.shape) + 1j * rng.standard_normal(s1.shape)))
    mag2 = np.abs(s2 + sd * (rng.standard_normal(s1.shape) + 1j * rng.standard_normal(s1.shape)))
    signed, ambiguous = recover_inv1_sign(
        mag1, mag2, P3T, b1=ph["b1"], mask=mask, voxel_size_mm=(2.0, 2.0, 2.0)
    )
    assert signed.dtype == np.float32 and ambiguous.dtype == bool
    np.testing.assert_allclose(np.abs(signed), mag1, rtol=1e-6)
    assert ambiguous[mask].mean() > 0.5  # the prior really decided most voxels
    assert not ambiguous[~mask].any() and np.all(signed[~mask] >= 0)
    right = np.sign(signed[mask]) == np.sign(s1[mask])
    assert right.mean() >= min_right
    # the naive magnitude-only UNI would have got every negative voxel wrong
    assert (s1[mask] > 0).mean() < min_right
    fit = fit_t1_mp2rage(uni_from_signals(signed, mag2), P3T, b1=ph["b1"], mask=mask)
    lesions = ph["lesion"] > 0
    assert fit.valid[lesions].all()
    rel = np.abs(fit.t1_s[lesions] / ph["t1"][lesions] - 1)
    if noise == 0:
        assert rel.max() < 0.01
        tissue = mask & (ph["label"] <= 2)
        np.testing.assert_allclose(fit.t1_s[tissue], ph["t1"][tissue], rtol=1e-3)
    else:
        assert np.median(rel) < 0.03


def test_inv1_sign_recovery_small_inputs_and_errors():
    # 1-D profile WM | GM | lesion | GM | WM with realistic PD and a receive-field ramp
    sizes = [20, 15, 10, 15, 20]
    t1 = np.repeat([0.83, 1.33, 0.3, 1.33, 0.83], sizes)
    pd = np.repeat([0.69, 0.80, 0.85, 0.80, 0.69], sizes)
    s1, s2 = mp2rage_signals(t1, P3T, m0=pd * np.linspace(900, 1100, t1.size))
    signed, ambiguous = recover_inv1_sign(np.abs(s1), np.abs(s2), P3T, voxel_size_mm=1.0)
    assert signed.shape == t1.shape and ambiguous.all()
    np.testing.assert_array_equal(np.sign(signed), np.sign(s1))
    with pytest.raises(ValueError, match="shapes differ"):
        recover_inv1_sign(np.ones(3), np.ones(4), P3T)
    with pytest.raises(ValueError, match="voxel_size_mm"):
        recover_inv1_sign(np.ones((3, 3, 3)), np.ones((3, 3, 3)), P3T, voxel_size_mm=(1.0, 1.0))
    with pytest.raises(ValueError, match="voxel_size_mm"):
        recover_inv1_sign(np.ones((3, 3)), np.ones((3, 3)), P3T, voxel_size_mm=-1.0)
