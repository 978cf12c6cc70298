"""SA2RAGE B1+ mapping (Eggenschwiler et al. 2012): the signal model against a pulse-by-pulse
simulation and against Marques's published closed form (non-integer shot counts), the ratio
look-up (round trips with and without a T1 map, the nominal-T1 error bound, invalid voxels),
and the protocol validation."""

from __future__ import annotations

import numpy as np
import pytest

from bids_agquant.qmri import sa2rage
from bids_agquant.qmri.sa2rage import (
    NOMINAL_T1_S,
    SA2RAGEProtocol,
    SA2RAGEProtocolError,
    b1_from_sa2rage,
    sa2rage_ratio,
    sa2rage_signals,
    sa2rage_t1_sensitivity,
    sign_change_b1,
)

#: Marques's demo protocol (DemoForR1Correction): TR 2.4 s, echo spacing 2.75 ms, delays
#: 47 ms / 1.8 s, flips 4 / 10 degrees, NumberShots = 128 [PF - 0.5, 0.5] / iPAT + RefLines / 2
#: (1 - 1 / iPAT) with 6/8 partial Fourier, iPAT 3, 18 reference lines: [16.67, 27.33].
DEMO_SIDECAR = {
    "RepetitionTimePreparation": 2.4,
    "RepetitionTimeExcitation": 0.00275,
    "InversionTime": [0.047, 1.8],
    "FlipAngle": [4, 10],
    "NumberShots": list(128 * np.array([0.25, 0.5]) / 3 + np.array([6, 6])),
}
DEMO = SA2RAGEProtocol.from_metadata(DEMO_SIDECAR)
#: The same with integer shot counts, for the pulse-by-pulse simulation.
INTEGER = SA2RAGEProtocol(2.4, 0.00275, (0.047, 1.8), (4.0, 10.0), 16, 28)
#: Another geometry: longer echo spacing, 11 degrees, a later first readout.
OTHER = SA2RAGEProtocol(2.4, 0.0031, (0.075, 1.8), (4.0, 11.0), 20, 20)

#: Off-grid B1 values (the table step is 0.0025).
B1_TRUE = np.linspace(0.5, 1.6, 353) + 1e-4 * np.sqrt(2)


# ------------------------------------------------------------------ independent references
def _simulate(t1, protocol: SA2RAGEProtocol, b1, max_cycles=500, tol=1e-15):
    """Pulse-by-pulse simulation over absolute time (integer shots): saturation at t = 0
    (``Mz -> cos(b1 theta) Mz``), every excitation at ``TI_k + (j - before) * tau``, exact
    relaxation between events, whole cycles until Mz at the saturation converges."""
    p = protocol
    nb, na = int(p.shots_before), int(p.shots_after)
    assert (nb, na) == (p.shots_before, p.shots_after)
    tau = p.repetition_time_excitation_s
    events = sorted((ti + (j - nb) * tau, k, j == nb)
                    for k, ti in enumerate(p.inversion_times_s) for j in range(nb + na))
    t1 = np.asarray(t1, dtype=np.float64)
    alphas = np.deg2rad(p.flip_angles_deg) * b1
    saturation = np.cos(np.deg2rad(p.saturation_flip_deg) * b1)
    mz = np.ones_like(t1)
    signals = [None, None]

    def relax(m, dt):
        e = np.exp(-dt / t1)
        return m * e + (1.0 - e)

    for _ in range(max_cycles):
        start = mz
        mz = saturation * mz
        now = 0.0
        for time, k, centre in events:
            mz = relax(mz, time - now)
            now = time
            if centre:
                signals[k] = mz * np.sin(alphas[k])
            mz = mz * np.cos(alphas[k])
        mz = relax(mz, p.repetition_time_preparation_s - now)
        if np.all(np.abs(mz - start) <= tol):
            return signals
    raise AssertionError("the simulation did not reach the steady state")


def _marques(t1, p: SA2RAGEProtocol, b1):
    """Marques's MPRAGE steady state (NeuroImage 2010, appendix), as his SA2RAGE look-up uses
    it: an "inversion efficiency" ``-cos(b1 pi / 2)``, fractional shot counts allowed. Written
    here as the product form of the paper (pre-inversion steady state, then the readouts)."""
    t1 = np.asarray(t1, dtype=np.float64)
    nb, na = p.shots_before, p.shots_after
    n, tau = nb + na, p.repetition_time_excitation_s
    (ti1, ti2), tr = p.inversion_times_s, p.repetition_time_preparation_s
    eff = -np.cos(b1 * np.deg2rad(p.saturation_flip_deg))
    e1 = np.exp(-tau / t1)
    e_td = [np.exp(-d / t1) for d in (ti1 - nb * tau, ti2 - ti1 - n * tau, tr - ti2 - na * tau)]
    ca = [np.cos(b1 * np.deg2rad(a)) * e1 for a in p.flip_angles_deg]

    def train(m, k, steps):
        return m * ca[k] ** steps + (1 - e1) * (1 - ca[k] ** steps) / (1 - ca[k])

    num = 1 - e_td[0]
    for k in range(2):
        num = train(num, k, n) * e_td[k + 1] + (1 - e_td[k + 1])
    m_ss = num / (1 + eff * (ca[0] * ca[1]) ** n * e_td[0] * e_td[1] * e_td[2])
    mz1 = train(-eff * m_ss * e_td[0] + (1 - e_td[0]), 0, nb)
    mz2 = train(train(mz1, 0, na) * e_td[1] + (1 - e_td[1]), 1, nb)
    return (mz1 * np.sin(b1 * np.deg2rad(p.flip_angles_deg[0])),
            mz2 * np.sin(b1 * np.deg2rad(p.flip_angles_deg[1])))


# ------------------------------------------------------------------------------ signal model
@pytest.mark.parametrize("b1", [0.3, 0.8, 1.0, 1.04, 1.2, 1.6, 2.2])
def test_signals_match_a_pulse_by_pulse_simulation(b1):
    t1 = np.array([0.2, 0.5, 0.8, 1.2, 1.5, 2.0, 3.0, 5.0])
    s1, s2 = sa2rage_signals(t1, INTEGER, b1=b1)
    r1, r2 = _simulate(t1, INTEGER, b1)
    # s1 crosses zero near B1 1.04: compare it on the scale of s2
    np.testing.assert_allclose(s1, r1, rtol=1e-9, atol=1e-11 * np.abs(r2).max())
    np.testing.assert_allclose(s2, r2, rtol=1e-9)


@pytest.mark.parametrize("protocol", [DEMO, OTHER, INTEGER], ids=["demo", "other", "integer"])
def test_signals_match_marques_closed_form_with_fractional_shots(protocol):
    t1 = np.geomspace(0.2, 5.0, 17)[:, None]
    b1 = np.linspace(0.05, 2.5, 50)[None, :]
    s1, s2 = sa2rage_signals(t1, protocol, b1=b1, m0=2.0)
    r1, r2 = _marques(t1, protocol, b1)
    np.testing.assert_allclose(s1, 2.0 * r1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s2, 2.0 * r2, rtol=1e-9)


def test_signals_broadcast_and_scale_with_m0():
    t1 = np.full((3, 1, 1), 1.2)
    b1 = np.linspace(0.6, 1.4, 4)[None, :, None]
    m0 = np.array([1.0, 250.0])
    s1, s2 = sa2rage_signals(t1, DEMO, b1=b1, m0=m0)
    assert s1.shape == s2.shape == (3, 4, 2)
    np.testing.assert_allclose(s1[..., 1], 250.0 * s1[..., 0], rtol=1e-14)
    np.testing.assert_allclose(sa2rage_ratio(b1, t1, DEMO)[..., 0], s1[..., 0] / s2[..., 0])
    assert np.all(s2 > 0)


def test_first_readout_changes_sign_near_nominal_b1():
    crossing = sign_change_b1(DEMO)
    assert 1.0 < crossing < 1.1  # measured 1.038 at T1 1.5 s
    s1, _ = sa2rage_signals(NOMINAL_T1_S, DEMO, b1=np.array([crossing - 1e-6, crossing + 1e-6]))
    assert s1[0] > 0 > s1[1]
    assert abs(float(sa2rage_signals(NOMINAL_T1_S, DEMO, b1=crossing)[0])) < 1e-12
    # a later first readout recovers longer: the crossing moves up
    assert sign_change_b1(OTHER) > crossing


# ------------------------------------------------------------------------------ the ratio
@pytest.mark.parametrize("t1", [0.2, 0.8, 1.5, 3.0, 5.0])
def test_ratio_is_monotonic_over_the_table_branch(t1):
    grid = np.arange(0.05, 2.0 + 1e-9, 0.0025)
    ratio = sa2rage_ratio(grid, t1, DEMO)
    assert np.all(np.diff(ratio) < 0)
    # the tabulated branch: from the start of the grid to the fold at B1 ~ 2.2 (saturation
    # past 180 degrees), whatever the T1
    table = sa2rage._build_table(DEMO, (0.05, 2.5), (float(t1),))
    assert table.b1[table.start[0]] > 2.1 and table.b1[table.stop[0] - 1] == 0.05
    assert table.lo[0] == pytest.approx(ratio.min(), abs=0.1) and table.hi[0] == ratio[0]


# ------------------------------------------------------------------------------ inversion
@pytest.mark.parametrize("t1", [0.8, 1.5, 3.0])
def test_round_trip_with_the_right_t1(t1):
    s1, s2 = sa2rage_signals(t1, DEMO, b1=B1_TRUE, m0=300.0)
    # a T1 map: the two-dimensional table, bilinear between its log-spaced T1 rows
    estimate, valid = b1_from_sa2rage(s1, s2, DEMO, t1_s=np.full(B1_TRUE.shape, t1))
    assert valid.all() and np.abs(estimate / B1_TRUE - 1).max() < 5e-3  # measured <= 1.4e-5
    # the same T1 as a scalar: a one-dimensional table at exactly that T1
    estimate, valid = b1_from_sa2rage(s1, s2, DEMO, t1_s=t1)
    assert valid.all() and np.abs(estimate / B1_TRUE - 1).max() < 1e-4  # measured 2.3e-6


def test_round_trip_of_a_map_with_a_t1_map():
    rng = np.random.default_rng(7)
    b1 = rng.uniform(0.5, 1.6, (20, 30, 10))
    t1 = rng.uniform(0.25, 4.5, b1.shape)
    s1, s2 = sa2rage_signals(t1, DEMO, b1=b1, m0=rng.uniform(50, 500, b1.shape))
    mask = np.ones(b1.shape, bool)
    mask[0] = False
    estimate, valid = b1_from_sa2rage(s1, s2, DEMO, t1_s=t1, mask=mask)
    assert estimate.shape == valid.shape == b1.shape
    assert np.array_equal(valid, mask)
    assert np.all(estimate[0] == 0)
    assert np.abs(estimate[valid] / b1[valid] - 1).max() < 5e-3


def test_the_nominal_t1_error_is_bounded_by_the_stated_sensitivity():
    assert NOMINAL_T1_S == 1.5
    bound = sa2rage_t1_sensitivity(DEMO)
    assert 0.005 < bound < 0.03  # measured 1.66 % for T1 0.8-2.5 s at B1 1
    rng = np.random.default_rng(3)
    for b1 in (1.0, 0.7, 1.3):
        bound_b1 = sa2rage_t1_sensitivity(DEMO, b1=b1)
        t1 = np.concatenate([[0.8, 2.5], rng.uniform(0.8, 2.5, 200)])
        s1, s2 = sa2rage_signals(t1, DEMO, b1=b1)
        estimate, valid = b1_from_sa2rage(s1, s2, DEMO)
        assert valid.all()
        assert np.abs(estimate / b1 - 1).max() <= bound_b1 + 1e-9
    # a wider T1 range can only be worse; at the nominal T1 itself there is no error
    assert sa2rage_t1_sensitivity(DEMO, t1_range_s=(0.5, 4.0)) > bound
    assert sa2rage_t1_sensitivity(DEMO, t1_range_s=(1.5, 1.5)) < 1e-6


def test_complex_signals_with_a_common_phase_give_the_signed_result():
    s1, s2 = sa2rage_signals(1.2, DEMO, b1=B1_TRUE)
    phase = np.exp(1j * np.linspace(-3, 3, B1_TRUE.size))
    real, valid_r = b1_from_sa2rage(s1, s2, DEMO, t1_s=1.2)
    cplx, valid_c = b1_from_sa2rage(s1 * phase, s2 * phase, DEMO, t1_s=1.2)
    assert valid_r.all() and np.array_equal(valid_r, valid_c)
    np.testing.assert_allclose(cplx, real, rtol=1e-12)


def test_magnitudes_fold_above_the_sign_change():
    """Why s1 must be signed: |S1| / S2 above the crossing is read on the other side of it."""
    b1 = np.array([1.2, 1.4])
    s1, s2 = sa2rage_signals(1.5, DEMO, b1=b1)
    assert np.all(s1 < 0)
    signed, _ = b1_from_sa2rage(s1, s2, DEMO)
    folded, valid = b1_from_sa2rage(np.abs(s1), s2, DEMO)
    np.testing.assert_allclose(signed, b1, rtol=1e-5)
    assert valid.all() and np.all(folded < sign_change_b1(DEMO))


def test_invalid_voxels_are_zero():
    s1, s2 = sa2rage_signals(1.5, DEMO, b1=1.0)
    s1v = np.array([s1, s1, np.nan, s1, np.inf, 5.0 * s2, -5.0 * s2, s1])
    s2v = np.array([0.0, -s2, s2, np.nan, s2, s2, s2, s2])
    b1, valid = b1_from_sa2rage(s1v, s2v, DEMO)
    # s2 = 0, s2 < 0, NaN / inf signals, ratios above and below the table; the last is fine
    assert valid.tolist() == [False] * 7 + [True]
    assert b1[:7].tolist() == [0.0] * 7 and b1[7] == pytest.approx(1.0, abs=1e-6)
    assert b1.dtype == np.float64 and valid.dtype == bool
    # T1 map entries that cannot be used, and a mask
    t1 = np.array([np.nan, 0.0, -1.0, 1.5])
    b1, valid = b1_from_sa2rage(np.full(4, s1), np.full(4, s2), DEMO, t1_s=t1)
    assert valid.tolist() == [False, False, False, True] and b1[:3].tolist() == [0.0] * 3
    b1, valid = b1_from_sa2rage(np.full(4, s1), np.full(4, s2), DEMO,
                                mask=np.array([True, False, True, False]))
    assert valid.tolist() == [True, False, True, False] and b1[1] == 0.0


def test_b1_range_limits_the_table():
    s1, s2 = sa2rage_signals(1.5, DEMO, b1=np.array([0.6, 0.9, 1.2]))
    b1, valid = b1_from_sa2rage(s1, s2, DEMO, b1_range=(0.8, 1.1))
    assert valid.tolist() == [False, True, False] and b1[1] == pytest.approx(0.9, rel=1e-5)
    for bad in ((1.0, 0.5), (0.0, 1.0), (0.5, np.inf), (1.0,), "ab"):
        with pytest.raises(ValueError, match="b1_range"):
            b1_from_sa2rage(s1, s2, DEMO, b1_range=bad)
    with pytest.raises(ValueError, match="t1_s"):
        b1_from_sa2rage(s1, s2, DEMO, t1_s=0.0)


def test_tables_are_cached_per_protocol():
    sa2rage._build_table.cache_clear()
    s1, s2 = sa2rage_signals(1.5, OTHER, b1=np.array([0.9, 1.1]))
    b1_from_sa2rage(s1, s2, OTHER)
    b1_from_sa2rage(s1, s2, SA2RAGEProtocol(**{**OTHER.__dict__}))  # an equal protocol
    info = sa2rage._build_table.cache_info()
    assert info.misses == 1 and info.hits == 1


# ------------------------------------------------------------------------------ protocol
def test_demo_protocol_from_metadata():
    assert DEMO.shots_before == pytest.approx(16.6667, abs=1e-4)
    assert DEMO.shots_after == pytest.approx(27.3333, abs=1e-4)
    assert DEMO.inversion_times_s == (0.047, 1.8) and DEMO.flip_angles_deg == (4.0, 10.0)
    assert DEMO.saturation_flip_deg == 90.0
    assert SA2RAGEProtocol.from_metadata(DEMO.as_metadata()) == DEMO
    assert hash(DEMO) == hash(SA2RAGEProtocol.from_metadata(DEMO_SIDECAR))
    # one number is the total, split in halves (Marques's convention)
    half = SA2RAGEProtocol.from_metadata({**DEMO_SIDECAR, "NumberShots": 33})
    assert (half.shots_before, half.shots_after) == (16.5, 16.5)
    assert SA2RAGEProtocol.from_metadata({**DEMO_SIDECAR, "NumberShots": [33]}) == half
    with pytest.raises(KeyError, match="InversionTime"):
        SA2RAGEProtocol.from_metadata({k: v for k, v in DEMO_SIDECAR.items()
                                       if k != "InversionTime"})
    for bad in ([1, 2, 3], "44", [], True, [[16, 28]]):
        with pytest.raises(SA2RAGEProtocolError, match="NumberShots"):
            SA2RAGEProtocol.from_metadata({**DEMO_SIDECAR, "NumberShots": bad})


GOOD = {"repetition_time_preparation_s": 2.4, "repetition_time_excitation_s": 0.00275,
        "inversion_times_s": (0.047, 1.8), "flip_angles_deg": (4.0, 10.0),
        "shots_before": 16.5, "shots_after": 27.5}


@pytest.mark.parametrize(("change", "key"), [
    ({"repetition_time_preparation_s": 0.0}, "RepetitionTimePreparation"),
    ({"repetition_time_preparation_s": "long"}, "RepetitionTimePreparation"),
    ({"repetition_time_excitation_s": np.nan}, "RepetitionTimeExcitation"),
    ({"repetition_time_excitation_s": -0.003}, "RepetitionTimeExcitation"),
    ({"inversion_times_s": (0.047,)}, "InversionTime"),
    ({"inversion_times_s": 0.047}, "InversionTime"),
    ({"inversion_times_s": (0.047, -1.0)}, r"InversionTime\[1\]"),
    ({"flip_angles_deg": (4.0, 180.0)}, r"FlipAngle\[1\]"),
    ({"flip_angles_deg": (0.0, 10.0)}, r"FlipAngle\[0\]"),
    ({"flip_angles_deg": (4.0, 10.0, 12.0)}, "FlipAngle"),
    ({"shots_before": 0.0}, r"NumberShots\[0\]"),
    ({"shots_after": True}, r"NumberShots\[1\]"),
    ({"shots_after": np.inf}, r"NumberShots\[1\]"),
    ({"saturation_flip_deg": 0.0}, "saturation_flip_deg"),
    # first readout before the saturation: 20 shots x 2.75 ms = 55 ms > 47 ms
    ({"shots_before": 20.0}, r"start before the saturation.*InversionTime\[0\]"),
    # readouts overlap
    ({"inversion_times_s": (0.047, 0.15)}, r"overlap.*InversionTime\[1\]"),
    # second readout ends after the next saturation
    ({"repetition_time_preparation_s": 1.85}, r"after the next saturation.*"
                                              "RepetitionTimePreparation"),
])
def test_protocol_errors_name_the_key(change, key):
    with pytest.raises(SA2RAGEProtocolError, match=key):
        SA2RAGEProtocol(**{**GOOD, **change})
    assert issubclass(SA2RAGEProtocolError, ValueError)


def test_protocol_coerces_and_accepts_fractional_shots_at_the_feasibility_edge():
    p = SA2RAGEProtocol(**{**GOOD, "inversion_times_s": [0.047, 1.8], "flip_angles_deg":
                           np.array([4, 10])})
    assert p.inversion_times_s == (0.047, 1.8) and isinstance(p.flip_angles_deg[0], float)
    # readouts back to back and the first one starting at the saturation
    tau, nb, na = 0.003, 12.5, 20.25
    edge = SA2RAGEProtocol(nb * tau + (na + nb) * tau + na * tau, tau,
                           (nb * tau, nb * tau + (na + nb) * tau), (4.0, 10.0), nb, na)
    s1, s2 = sa2rage_signals(1.0, edge)
    assert np.isfinite(s1) and s2 > 0
