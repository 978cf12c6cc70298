"""MP2RAGE with one echo spacing per readout train (MP2RAGE-ME: 6.2 ms on INV1, 32 ms on the
multi-echo INV2 train): protocol keys and timing checks, bit-identity of the single-spacing
model with the implementation before the change, an independent pulse-by-pulse simulation, and
the T1 fit (which is wrong by several percent if the INV2 spacing is ignored)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bids_agquant.qmri.mp2rage import (
    MP2RAGEProtocol,
    MP2RAGETimingError,
    fit_t1_mp2rage,
    monotonic_branch,
    mp2rage_signals,
    uni_from_signals,
)
from bids_agquant.qmri.mp2rage import lookup as mp2rage_lookup

#: Single-spacing protocols whose outputs (and lookup tables) must not change: 3 T with
#: partial Fourier, the bids-examples 7 T one, and the project's DRO protocol.
P3T = MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 44, 88)
P7T = MP2RAGEProtocol(5.5, 0.0062, (0.8, 2.7), (5.0, 7.0), 79, 80)
PDRO = MP2RAGEProtocol(5.0, 0.0071, (0.7, 2.5), (4.0, 5.0), 44, 88, 0.96)
#: Large flips: b1 * alpha passes 90 degrees, the q**n branch of the closed form.
PBIG = MP2RAGEProtocol(6.0, 0.008, (0.9, 3.0), (60.0, 80.0), 20, 30, 0.9)

#: The MP2RAGE-ME case: TR_prep 5 s, TI 0.7 / 2.5 s, 4 / 5 degrees, [30, 60] shots per train.
ME_COMMON = {"repetition_time_preparation_s": 5.0, "repetition_time_excitation_s": 0.0062,
             "inversion_times_s": (0.7, 2.5), "flip_angles_deg": (4.0, 5.0),
             "shots_before": 30, "shots_after": 60}
ME = MP2RAGEProtocol(**ME_COMMON, repetition_time_excitation_inv2_s=0.032)


# ----------------------------------------------------------------- frozen reference model
def _compose(first, then):
    return then[0] * first[0], then[0] * first[1] + then[1]


def _reference_signals(t1_s, protocol, b1=1.0, m0=1.0):
    """``mp2rage_signals`` as it was before per-train echo spacings (commit 72b4fa4), frozen
    verbatim: one ``tau`` for both trains."""
    t1 = np.asarray(t1_s, dtype=np.float64)
    b1_a = np.asarray(b1, dtype=np.float64)
    m0_a = np.asarray(m0, dtype=np.float64)
    p = protocol
    tau = p.repetition_time_excitation_s
    n_b, n_a = p.shots_before, p.shots_after
    ti1, ti2 = p.inversion_times_s
    alpha1, alpha2 = np.deg2rad(p.flip_angles_deg[0]), np.deg2rad(p.flip_angles_deg[1])
    gaps = (
        max(ti1 - n_b * tau, 0.0),
        max((ti2 - n_b * tau) - (ti1 + n_a * tau), 0.0),
        max(p.repetition_time_preparation_s - (ti2 + n_a * tau), 0.0),
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r1 = np.where(t1 > 0, 1.0 / t1, np.nan)
        e_tau = np.exp(-tau * r1)
        one_minus_e_tau = -np.expm1(-tau * r1)

        def relax(gap):
            return np.exp(-gap * r1), -np.expm1(-gap * r1)

        def trains(alpha):
            cos_a = np.cos(b1_a * alpha)
            one_minus_q = one_minus_e_tau + e_tau * (2.0 * np.sin(0.5 * b1_a * alpha) ** 2)
            if np.all(cos_a > 0):
                log_q = np.log(cos_a) - tau * r1
                q_nb, q_na = np.exp(n_b * log_q), np.exp(n_a * log_q)
            else:
                q = cos_a * e_tau
                q_nb, q_na = q**n_b, q**n_a
            scale = one_minus_e_tau / one_minus_q
            return (q_nb, scale * (1.0 - q_nb)), (q_na, scale * (1.0 - q_na))

        before1, after1 = trains(alpha1)
        before2, after2 = trains(alpha2)
        inversion = (-p.inversion_efficiency, 0.0)
        to_ti1 = _compose(_compose(inversion, relax(gaps[0])), before1)
        ti1_to_ti2 = _compose(_compose(after1, relax(gaps[1])), before2)
        ti2_to_end = _compose(after2, relax(gaps[2]))
        a_cyc, b_cyc = _compose(_compose(to_ti1, ti1_to_ti2), ti2_to_end)
        m_start = b_cyc / (1.0 - a_cyc)
        mz1 = to_ti1[0] * m_start + to_ti1[1]
        mz2 = ti1_to_ti2[0] * mz1 + ti1_to_ti2[1]
        s1 = m0_a * mz1 * np.sin(b1_a * alpha1)
        s2 = m0_a * mz2 * np.sin(b1_a * alpha2)
    return s1, s2


T1_GRID = np.concatenate([np.geomspace(0.01, 20.0, 997), [0.0, -1.0, np.nan, np.inf]])


@pytest.mark.parametrize("protocol", [P3T, P7T, PDRO, PBIG], ids=["3T", "7T", "dro", "big"])
def test_single_spacing_signals_are_bit_identical_to_the_frozen_model(protocol):
    b1 = np.linspace(0.3, 2.0, 23)[:, None]
    m0 = np.linspace(0.5, 3.0, T1_GRID.size)
    for args in ((T1_GRID,), (T1_GRID[None, :], b1), (T1_GRID[None, :], b1, m0), (1.3, 1.1)):
        new = mp2rage_signals(*args[:1], protocol, *args[1:])
        old = _reference_signals(*args[:1], protocol, *args[1:])
        for mine, ref in zip(new, old, strict=True):
            assert mine.dtype == ref.dtype and mine.shape == ref.shape
            assert np.array_equal(mine, ref, equal_nan=True)


@pytest.mark.parametrize("protocol", [P3T, P7T, PDRO], ids=["3T", "7T", "dro"])
def test_single_spacing_lookup_tables_are_bit_identical(protocol, monkeypatch):
    args = (protocol, (0.05, 5.0), (0.5, 1.6))
    new = mp2rage_lookup._build_lookup.__wrapped__(*args)
    # the same table builder, on the frozen signal model
    monkeypatch.setattr(mp2rage_lookup, "mp2rage_signals", _reference_signals)
    old = mp2rage_lookup._build_lookup.__wrapped__(*args)
    for name, mine, ref in zip(new._fields, new, old, strict=True):
        assert np.array_equal(mine, ref, equal_nan=True), name


def test_none_and_an_explicit_equal_inv2_spacing_are_the_same_protocol():
    explicit = dataclasses.replace(P7T, repetition_time_excitation_inv2_s=0.0062)
    assert explicit.repetition_time_excitation_inv2_s is None  # normalised
    assert explicit == P7T and hash(explicit) == hash(P7T)
    assert explicit.repetition_times_excitation_s == (0.0062, 0.0062)
    b1 = np.linspace(0.5, 1.6, 12)[:, None]
    for mine, ref in zip(mp2rage_signals(T1_GRID, explicit, b1),
                         mp2rage_signals(T1_GRID, P7T, b1), strict=True):
        assert np.array_equal(mine, ref, equal_nan=True)
    uni = uni_from_signals(*mp2rage_signals(np.geomspace(0.3, 3, 50), P7T))
    a, b = fit_t1_mp2rage(uni, explicit), fit_t1_mp2rage(uni, P7T)
    assert np.array_equal(a.t1_s, b.t1_s) and np.array_equal(a.valid, b.valid)


def test_unequal_spacing_changes_only_the_inv2_train_dependent_values():
    single = MP2RAGEProtocol(**ME_COMMON)
    assert ME.repetition_times_excitation_s == (0.0062, 0.032)
    s1, s2 = mp2rage_signals(np.array([0.5, 1.0, 2.0]), ME)
    r1, r2 = mp2rage_signals(np.array([0.5, 1.0, 2.0]), single)
    # a slower INV2 train: fewer excitations per second, more Mz at its centre
    assert np.all(s2 > r2)
    assert not np.allclose(s1, r1, rtol=1e-3)  # the steady state (hence INV1) moves too


# ------------------------------------------------------------- pulse-by-pulse simulation
def _simulate(t1, protocol: MP2RAGEProtocol, b1=1.0, max_cycles=2000, tol=1e-15):
    """Independent discrete-event simulation over absolute time: inversion at t = 0, every
    excitation of both trains at ``TI_k + (j - shots_before) * tau_k`` with its own
    ``tau_k``, exact relaxation between consecutive events and to the next inversion; full
    cycles are repeated until Mz at the inversion converges. Vectorised over ``t1``."""
    p = protocol
    nb, na = p.shots_before, p.shots_after
    events = []  # (time s, train, is the k-space centre)
    for k, (ti, tau) in enumerate(zip(p.inversion_times_s, p.repetition_times_excitation_s,
                                      strict=True)):
        events += [(ti + (j - nb) * tau, k, j == nb) for j in range(nb + na)]
    events.sort(key=lambda e: e[0])
    t1 = np.asarray(t1, dtype=np.float64)
    alphas = np.deg2rad(p.flip_angles_deg) * b1
    mz = np.ones_like(t1)
    signals = [None, None]

    def relax(m, dt):
        e = np.exp(-dt / t1)
        return m * e + (1.0 - e)

    for _ in range(max_cycles):
        start = mz
        mz = -p.inversion_efficiency * mz
        now = 0.0
        for time, k, centre in events:
            mz = relax(mz, time - now)
            now = time
            if centre:
                signals[k] = mz * np.sin(alphas[k])
            mz = mz * np.cos(alphas[k])
        mz = relax(mz, p.repetition_time_preparation_s - now)
        if np.all(np.abs(mz - start) <= tol):
            break
    else:
        raise AssertionError("the simulation did not reach the steady state")
    return signals[0], signals[1]


@pytest.mark.parametrize("b1", [0.7, 1.0, 1.3])
def test_per_train_spacing_matches_a_pulse_by_pulse_simulation(b1):
    t1 = np.array([0.2, 0.35, 0.5, 0.8, 1.0, 1.4, 2.0, 3.0, 4.0])
    for protocol in (ME, dataclasses.replace(ME, repetition_time_excitation_s=0.012,
                                             repetition_time_excitation_inv2_s=0.004)):
        mine = mp2rage_signals(t1, protocol, b1)
        ref = _simulate(t1, protocol, b1)
        for a, b in zip(mine, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


def test_the_simulation_agrees_with_the_single_spacing_model_too():
    t1 = np.array([0.3, 1.0, 3.0])
    for a, b in zip(mp2rage_signals(t1, P3T, 1.1), _simulate(t1, P3T, 1.1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)


# ------------------------------------------------------------------------------ T1 fit
def test_t1_fit_recovers_t1_with_each_trains_spacing_and_fails_with_one():
    t1 = np.geomspace(0.2, 4.0, 121)
    branch = monotonic_branch(ME)
    assert branch.t1_short_s < 0.2 and branch.t1_long_s > 4.0
    uni = uni_from_signals(*mp2rage_signals(t1, ME))
    right = fit_t1_mp2rage(uni, ME)
    assert right.valid.all()
    assert np.abs(right.t1_s / t1 - 1).max() < 1e-4  # measured 1.2e-6 (float32 UNI)
    # the same data fitted as if INV2 had INV1's 6.2 ms spacing
    wrong = fit_t1_mp2rage(uni, MP2RAGEProtocol(**ME_COMMON))
    error = np.abs(np.where(wrong.valid, wrong.t1_s, np.nan) / t1 - 1)
    assert np.nanmax(error) > 0.1  # measured 21 % at 0.2 s, 12 % at 4 s
    assert np.nanmedian(error) > 0.03  # measured 5.7 %


def test_t1_fit_with_a_b1_map_and_per_train_spacing():
    t1 = np.geomspace(0.3, 3.0, 40)
    b1 = np.linspace(0.8, 1.25, t1.size)
    uni = uni_from_signals(*mp2rage_signals(t1, ME, b1))
    fit = fit_t1_mp2rage(uni, ME, b1=b1)
    assert fit.valid.all() and np.abs(fit.t1_s / t1 - 1).max() < 1e-3


# ------------------------------------------------------------------ protocol and sidecars
def test_timing_is_checked_with_each_trains_spacing():
    # with 32 ms on INV1 too the first train would start 0.26 s before the inversion
    with pytest.raises(MP2RAGETimingError, match="RepetitionTimeExcitation"):
        MP2RAGEProtocol(**{**ME_COMMON, "repetition_time_excitation_s": 0.032})
    # INV2 at 32 ms: 60 shots after TI2 = 4.3 s end at 6.22 s > 5 s; fine at 6.2 ms
    late = {**ME_COMMON, "inversion_times_s": (0.7, 4.3)}
    MP2RAGEProtocol(**late)
    with pytest.raises(MP2RAGETimingError, match=r"tau2.*RepetitionTimePreparation"):
        MP2RAGEProtocol(**late, repetition_time_excitation_inv2_s=0.032)
    # INV2 at 32 ms: 30 shots before TI2 = 1.9 s start at 0.94 s < INV1's end 1.072 s
    early = {**ME_COMMON, "inversion_times_s": (0.7, 1.9)}
    MP2RAGEProtocol(**early)
    with pytest.raises(MP2RAGETimingError, match="overlap"):
        MP2RAGEProtocol(**early, repetition_time_excitation_inv2_s=0.032)
    # and a slow INV1 with a fast INV2 is checked the other way round
    with pytest.raises(MP2RAGETimingError, match="overlap"):
        MP2RAGEProtocol(**{**early, "repetition_time_excitation_s": 0.02},
                        repetition_time_excitation_inv2_s=0.0062)


@pytest.mark.parametrize("value", [0.0, -0.01, float("nan"), float("inf"), "fast", [0.03]])
def test_invalid_inv2_spacing_names_the_key(value):
    with pytest.raises(MP2RAGETimingError, match="RepetitionTimeExcitation"):
        MP2RAGEProtocol(**ME_COMMON, repetition_time_excitation_inv2_s=value)


def _sidecar(spacing):
    return {"RepetitionTimePreparation": 5.0, "RepetitionTimeExcitation": spacing,
            "InversionTime": [0.7, 2.5], "FlipAngle": [4, 5], "NumberShots": [30, 60]}


def test_metadata_accepts_a_number_or_one_spacing_per_inversion():
    assert MP2RAGEProtocol.from_metadata(_sidecar(0.0062)) == MP2RAGEProtocol(**ME_COMMON)
    for pair in ([0.0062, 0.032], (0.0062, 0.032), np.array([0.0062, 0.032])):
        p = MP2RAGEProtocol.from_metadata(_sidecar(pair))
        assert p == ME and p.repetition_times_excitation_s == (0.0062, 0.032)
    equal = MP2RAGEProtocol.from_metadata(_sidecar([0.0062, 0.0062]))
    assert equal == MP2RAGEProtocol(**ME_COMMON) and equal.repetition_time_excitation_inv2_s is None
    assert MP2RAGEProtocol.from_metadata(_sidecar([0.0062])) == MP2RAGEProtocol(**ME_COMMON)
    for bad in ([0.0062, 0.032, 0.04], [], "0.0062", [[0.0062, 0.032]]):
        with pytest.raises(MP2RAGETimingError, match="RepetitionTimeExcitation"):
            MP2RAGEProtocol.from_metadata(_sidecar(bad))


def test_as_metadata_writes_a_pair_only_when_the_spacings_differ():
    assert ME.as_metadata()["RepetitionTimeExcitation"] == [0.0062, 0.032]
    assert MP2RAGEProtocol.from_metadata(ME.as_metadata()) == ME
    # unchanged output for one spacing
    assert P3T.as_metadata() == {
        "RepetitionTimePreparation": 5.0, "RepetitionTimeExcitation": 0.007,
        "InversionTime": [0.7, 2.5], "FlipAngle": [4.0, 5.0], "NumberShots": [44, 88],
        "InversionEfficiency": 0.96}
    assert MP2RAGEProtocol.from_metadata(P3T.as_metadata()) == P3T
