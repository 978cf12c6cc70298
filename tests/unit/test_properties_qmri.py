"""Property-based tests (hypothesis) of the qMRI models: VFA, MP2RAGE, B1 and uptake.

Every property holds for *any* finite input (and, where a docstring promises it, for
non-finite ones): no exception other than the documented ones, outputs of the right shape and
dtype, every T1 either finite, > 0 and consistent with R1 = 1/T1, or marked invalid exactly as
the function documents (``valid`` False and 0 in the maps), no floating-point warning storm.
Round trips (noise-free signals -> fit -> T1) are checked over the physically meaningful range.

The examples are derandomised (profile ``bids-agquant-ci``) so that CI runs are reproducible;
set ``BIDS_AGQUANT_HYPOTHESIS_PROFILE=bids-agquant-thorough`` for a longer, randomised search.
Plain regression tests of the bugs these properties found are at the end of the module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# shared hypothesis profiles (tests/hypothesis_profiles.py)
from hypothesis_profiles import no_float_warnings, props

from bids_agquant.qmri import mp2rage as mp
from bids_agquant.qmri.b1 import B1UnitsError, b1_to_fraction
from bids_agquant.qmri.mp2rage import (
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
from bids_agquant.qmri.uptake import (
    delta_r1,
    dose_normalised,
    gd_concentration_mM,
    mass_concentration_mg_per_L,
    percent_injected_dose_per_g,
    signal_enhancement_percent,
)
from bids_agquant.qmri.vfa import VFA_METHODS, fit_vfa, fit_vfa_linear, spgr_signal

F32_MAX = float(np.finfo(np.float32).max)

# ----------------------------------------------------------------------------- strategies

#: Any finite float64, with hypothesis' usual bias towards 0, +-1, tiny and huge magnitudes.
finite = st.floats(allow_nan=False, allow_infinity=False)
#: Any finite value of a float32 image (what NIfTI maps hold).
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
positive = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False)

spatial_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)

#: Flip angles: odd values (near 0, 90, 180) mixed with ordinary ones.
flip_angle = st.one_of(
    st.sampled_from([1e-6, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 89.999, 90.0, 90.001,
                     120.0, 179.0, 179.999]),
    st.floats(min_value=0.0, max_value=180.0, exclude_min=True, exclude_max=True),
)
flip_sets = st.lists(flip_angle, min_size=2, max_size=5, unique=True)
tr_values = st.one_of(st.sampled_from([1e-300, 1e-44, 1e-6, 0.005, 0.015, 1.0, 1e6, 1e300]),
                      positive)


@st.composite
def vfa_inputs(draw):
    """Arbitrary VFA inputs: signals (..., n_flips), flips, TR, optional B1 and mask."""
    flips = draw(flip_sets)
    spatial = draw(spatial_shapes)
    kind = draw(st.sampled_from(["any", "constant", "zero", "model"]))
    shape = (*spatial, len(flips))
    if kind == "any":
        signals = draw(hnp.arrays(np.float64, shape, elements=finite))
    elif kind == "constant":  # the same signal at every flip angle
        signals = np.full(shape, draw(finite))
    elif kind == "zero":
        signals = np.zeros(shape)
    else:  # the SPGR model itself, with arbitrary (even unphysical) parameters
        m0 = draw(st.floats(-1e6, 1e6, allow_nan=False))
        t1 = draw(st.floats(1e-6, 1e6))
        signals = np.broadcast_to(spgr_signal(m0, t1, flips, draw(tr_values)), shape).copy()
    tr = draw(tr_values)
    b1_kind = draw(st.sampled_from(["none", "scalar", "map"]))
    b1 = None
    if b1_kind == "scalar":
        b1 = draw(st.floats(-1.0, 3.0))
    elif b1_kind == "map":
        b1 = draw(hnp.arrays(np.float64, spatial,
                             elements=st.one_of(st.floats(-1.0, 3.0), finite)))
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, spatial)))
    return signals, flips, tr, b1, mask


def _check_t1_r1(t1, r1, valid, lo=0.0, hi=math.inf):
    """T1 and R1 maps: valid voxels finite, > 0, R1 = 1/T1, T1 in [lo, hi]; invalid ones 0."""
    assert t1.dtype == np.float32 and r1.dtype == np.float32 and valid.dtype == np.bool_
    assert t1.shape == r1.shape == valid.shape
    tv, rv = t1[valid].astype(np.float64), r1[valid].astype(np.float64)
    assert np.all(np.isfinite(tv)) and np.all(tv > 0), tv
    assert np.all(np.isfinite(rv)) and np.all(rv > 0), rv
    # both are float32 roundings of reciprocal float64 values
    np.testing.assert_allclose(tv * rv, 1.0, rtol=1e-6)
    assert np.all(tv >= lo * (1 - 1e-6)) and np.all(tv <= hi * (1 + 1e-6)), (tv, lo, hi)
    assert not np.any(t1[~valid]) and not np.any(r1[~valid])


# ----------------------------------------------------------------------------- VFA


@props(300)
@given(inputs=vfa_inputs(), method=st.sampled_from(VFA_METHODS))
def test_fit_vfa_outputs_are_valid_or_marked_invalid(inputs, method):
    signals, flips, tr, b1, mask = inputs
    with no_float_warnings():
        fit = fit_vfa(signals, flips, tr, b1=b1, mask=mask, method=method, max_iterations=20)
    spatial = signals.shape[:-1]
    assert fit.t1_s.shape == fit.r1_per_s.shape == fit.m0.shape == fit.valid.shape == spatial
    assert fit.m0.dtype == np.float32
    _check_t1_r1(fit.t1_s, fit.r1_per_s, fit.valid)
    # invalid voxels hold 0, valid ones a finite M0 (> 0 for the iterative fits)
    assert not np.any(fit.m0[~fit.valid])
    assert np.all(np.isfinite(fit.m0[fit.valid]))
    if method != "linear":
        assert np.all(fit.m0[fit.valid] > 0)
    # documented invalid voxels: outside the mask, non-positive / non-finite B1
    if mask is not None:
        assert not np.any(fit.valid[~mask])
    if b1 is not None:
        b1_map = np.broadcast_to(b1, spatial)
        assert not np.any(fit.valid[~(np.isfinite(b1_map) & (b1_map > 0))])
    if not np.any(signals):  # zero signal carries no information
        assert not fit.valid.any()


@props(100)
@given(inputs=vfa_inputs(), method=st.sampled_from(VFA_METHODS))
def test_fit_vfa_does_not_depend_on_chunking(inputs, method):
    """The docstring promises results independent of ``chunk_voxels``."""
    signals, flips, tr, b1, mask = inputs
    with no_float_warnings():
        whole = fit_vfa(signals, flips, tr, b1=b1, mask=mask, method=method)
        single = fit_vfa(signals, flips, tr, b1=b1, mask=mask, method=method, chunk_voxels=1)
    for a, b in zip(whole, single, strict=True):
        np.testing.assert_array_equal(a, b)


@props(60)
@given(inputs=vfa_inputs())
def test_fit_vfa_linear_is_fit_vfa_linear_method(inputs):
    signals, flips, tr, b1, mask = inputs
    with no_float_warnings():
        a = fit_vfa_linear(signals, flips, tr, b1, mask)
        b = fit_vfa(signals, flips, tr, b1, mask, method="linear")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@props(60)
@given(
    flips=st.one_of(
        st.lists(st.sampled_from([0.0, -5.0, 180.0, 360.0, math.nan, math.inf]), min_size=1,
                 max_size=3).map(lambda bad: [5.0, 15.0, *bad]),
        st.lists(st.floats(1.0, 90.0), min_size=0, max_size=1),
        st.floats(1.0, 90.0).map(lambda f: [f, f, 20.0 if f != 20.0 else 30.0]),
    ),
    tr=st.one_of(st.sampled_from([0.0, -0.01, math.nan, math.inf]), st.floats(0.001, 1.0)),
)
def test_fit_vfa_invalid_arguments_raise_named_value_errors(flips, tr):
    signals = np.ones((2, len(flips)))
    bad_flips = (len(flips) < 2 or len(set(flips)) != len(flips)
                 or not all(0 < f < 180 for f in flips))
    bad_tr = not (math.isfinite(tr) and tr > 0)
    assume(bad_flips or bad_tr)
    with pytest.raises(ValueError, match="flip|tr_s"):
        fit_vfa(signals, flips, tr)


@st.composite
def vfa_truth(draw):
    """A physically meaningful VFA experiment: protocol, B1 and (M0, T1) per voxel."""
    n_flips = draw(st.integers(2, 4))
    flips = sorted(draw(st.lists(st.floats(1.0, 70.0), min_size=n_flips, max_size=n_flips,
                                 unique=True)))
    # DESPOT1 needs angles far enough apart to be well conditioned (a 2 deg spread at least)
    assume(flips[-1] - flips[0] >= 2.0)
    tr = draw(st.floats(0.002, 0.05))
    n = draw(st.integers(1, 6))
    t1 = np.asarray(draw(st.lists(st.floats(0.05, 5.0), min_size=n, max_size=n)))
    m0 = np.asarray(draw(st.lists(st.floats(1.0, 1e5), min_size=n, max_size=n)))
    b1 = draw(st.one_of(st.none(), st.lists(st.floats(0.5, 1.5), min_size=n, max_size=n)
                        .map(np.asarray)))
    return flips, tr, t1, m0, b1


@props(150)
@given(truth=vfa_truth(), method=st.sampled_from(VFA_METHODS))
def test_fit_vfa_recovers_t1_from_noise_free_signals(truth, method):
    """Round trip: SPGR(M0, T1, B1) -> fit -> T1 within 0.1 % over T1 0.05-5 s, B1 0.5-1.5."""
    flips, tr, t1, m0, b1 = truth
    signals = spgr_signal(m0, t1, flips, tr, b1=1.0 if b1 is None else b1)
    with no_float_warnings():
        fit = fit_vfa(signals, flips, tr, b1=b1, method=method)
    assert fit.valid.all()
    np.testing.assert_allclose(fit.t1_s, t1, rtol=1e-3)
    np.testing.assert_allclose(fit.m0, m0, rtol=1e-3)


# ----------------------------------------------------------------------------- B1


@props(100)
@given(
    values=hnp.arrays(np.float64, spatial_shapes,
                      elements=st.one_of(finite32, st.sampled_from([math.nan, math.inf]))),
    units=st.sampled_from([None, "percent", "%", "fraction", "a.u.", "1", "Hz", ""]),
)
def test_b1_to_fraction_is_finite_and_explained(values, units):
    """Either a finite fraction with the decision explained, or a refusal that says why."""
    try:
        with no_float_warnings():
            out, decision = b1_to_fraction(values, units)
    except B1UnitsError as exc:
        positive = values[np.isfinite(values) & (values > 0)]
        assert units == "Hz" or positive.size == 0 or np.median(positive) > 300
        assert "--b1-units" in str(exc) or "no finite positive" in str(exc)
        return
    assert out.shape == values.shape and out.dtype == np.float64
    assert np.all(np.isfinite(out))
    assert not np.any(out[~np.isfinite(values)])
    as_percent = "taken as percent" in decision
    assert as_percent or "taken as fraction" in decision
    finite_in = np.isfinite(values)
    expected = values[finite_in] / 100.0 if as_percent else values[finite_in]
    np.testing.assert_allclose(out[finite_in], expected, rtol=1e-15)
    if units in (None, ""):
        assert decision.startswith("WARNING")  # a guess is never silent


# ----------------------------------------------------------------------------- MP2RAGE


@st.composite
def mp2rage_protocols(draw, realistic=False):
    """Feasible MP2RAGE protocols, including zero gaps (trains back to back: the limit of
    feasibility) and unusual flip angles / efficiencies."""
    tau = draw(st.floats(0.002, 0.02))
    n_b = draw(st.integers(1, 120))
    n_a = draw(st.integers(1, 120))
    gap = st.one_of(st.just(0.0), st.floats(0.0, 3.0))
    g0, g1, g2 = draw(gap), draw(gap), draw(gap)
    ti1 = n_b * tau + g0
    ti2 = ti1 + n_a * tau + g1 + n_b * tau
    tr = ti2 + n_a * tau + g2
    if realistic:
        flips = (draw(st.floats(2.0, 10.0)), draw(st.floats(2.0, 10.0)))
        eff = draw(st.floats(0.8, 1.0))
    else:
        flips = (draw(flip_angle), draw(flip_angle))
        eff = draw(st.one_of(st.just(1.0), st.floats(1e-3, 1.0)))
    try:
        return MP2RAGEProtocol(tr, tau, (ti1, ti2), flips, n_b, n_a, eff)
    except MP2RAGETimingError:  # rounding at a zero gap: can only be an infeasibility
        assume(False)


P3T = MP2RAGEProtocol(5.0, 0.007, (0.7, 2.5), (4.0, 5.0), 44, 88)
#: Trains back to back, everything at the edge of feasibility.
P_TIGHT = MP2RAGEProtocol(88 * 0.007 + 2 * 44 * 0.007 + 88 * 0.007, 0.007,
                          (44 * 0.007, 44 * 0.007 + 88 * 0.007 + 44 * 0.007), (4.0, 5.0), 44, 88)
P7T = MP2RAGEProtocol(5.5, 0.0062, (0.8, 2.7), (5.0, 7.0), 79, 80)
fixed_protocols = st.sampled_from([P3T, P_TIGHT, P7T])

_TIMING_WORDS = ("RepetitionTimePreparation", "RepetitionTimeExcitation", "InversionTime",
                 "FlipAngle", "shots_before", "shots_after", "InversionEfficiency",
                 "infeasible MP2RAGE timing")


@props(300)
@given(
    tr=finite, tau=finite, ti=st.tuples(finite, finite),
    flips=st.tuples(st.one_of(flip_angle, finite), st.one_of(flip_angle, finite)),
    n_b=st.one_of(st.integers(-2, 200), finite), n_a=st.one_of(st.integers(-2, 200), finite),
    eff=st.one_of(st.floats(0.0, 1.5), finite),
)
def test_protocol_is_feasible_or_raises_a_named_timing_error(tr, tau, ti, flips, n_b, n_a, eff):
    try:
        p = MP2RAGEProtocol(tr, tau, ti, flips, n_b, n_a, eff)
    except MP2RAGETimingError as err:
        assert any(word in str(err) for word in _TIMING_WORDS), str(err)
        return
    tol = 1e-9
    tau, (ti1, ti2) = p.repetition_time_excitation_s, p.inversion_times_s
    assert ti1 - p.shots_before * tau >= -tol
    assert ti2 - p.shots_before * tau >= ti1 + p.shots_after * tau - tol
    assert ti2 + p.shots_after * tau <= p.repetition_time_preparation_s + tol
    assert all(0 < f < 180 for f in p.flip_angles_deg) and 0 < p.inversion_efficiency <= 1
    assert MP2RAGEProtocol.from_metadata(p.as_metadata()) == p


@props(60)
@given(shots=st.one_of(st.integers(-2, 400), finite, st.tuples(st.integers(-1, 200),
                                                               st.integers(-1, 200))))
def test_number_shots_total_or_pair(shots):
    """A number is the total (split before = N // 2), a pair is [before, after] literally."""
    timing = {"repetition_time_preparation_s": 20.0, "repetition_time_excitation_s": 0.001,
              "inversion_times_s": (2.0, 8.0), "flip_angles_deg": (4.0, 5.0)}
    try:
        p = MP2RAGEProtocol.from_number_shots(shots, **timing)
    except MP2RAGETimingError as err:
        assert "NumberShots" in str(err) or "shots_" in str(err), str(err)
        return
    if isinstance(shots, tuple):
        assert (p.shots_before, p.shots_after) == shots
    else:
        assert p.shots_before + p.shots_after == shots and p.shots_before == int(shots) // 2


@props(150)
@given(
    protocol=mp2rage_protocols(),
    t1=hnp.arrays(np.float64, spatial_shapes,
                  elements=st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-3, 0.05, 5.0]))),
    b1=st.one_of(st.just(1.0), st.floats(0.01, 2.0)),
    m0=st.floats(-1e6, 1e6),
)
def test_mp2rage_signals_are_bounded_by_m0(protocol, t1, b1, m0):
    """|Mz| <= 1 at both k-space centres for any T1 > 0, B1 and feasible protocol."""
    with no_float_warnings():
        s1, s2 = mp2rage_signals(t1, protocol, b1=b1, m0=m0)
    assert s1.shape == s2.shape == t1.shape
    assert np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))
    for s, flip in zip((s1, s2), protocol.flip_angles_deg, strict=True):
        bound = abs(m0 * math.sin(math.radians(b1 * flip)))
        assert np.all(np.abs(s) <= bound * (1 + 1e-9) + 1e-300)


@props(150)
@given(
    pair=st.one_of(
        st.integers(1, 3).flatmap(
            lambda n: st.tuples(hnp.arrays(np.float64, (n, 2), elements=finite),
                                hnp.arrays(np.float64, (n, 2), elements=finite))),
        st.integers(1, 3).flatmap(
            lambda n: st.tuples(hnp.arrays(np.complex128, (n,), elements=st.complex_numbers(
                allow_nan=False, allow_infinity=False)),
                hnp.arrays(np.complex128, (n,), elements=st.complex_numbers(
                    allow_nan=False, allow_infinity=False)))),
    ),
)
def test_uni_from_signals_is_bounded_and_scale_free(pair):
    s1, s2 = pair
    with no_float_warnings():
        uni = uni_from_signals(s1, s2)
        swapped = uni_from_signals(s2, s1)
    assert uni.shape == s1.shape and uni.dtype == np.float32
    assert np.all(np.isfinite(uni)) and np.all(np.abs(uni) <= 0.5)
    np.testing.assert_array_equal(uni, swapped)
    both_zero = (s1 == 0) & (s2 == 0)
    assert not np.any(uni[both_zero])
    # the exact value, on inputs normalised so that their largest real / imaginary part is 1
    scale = np.maximum.reduce([np.abs(s1.real), np.abs(s1.imag), np.abs(s2.real),
                               np.abs(s2.imag)])
    nz = ~both_zero
    (ar, ai), (br, bi) = ((s.real[nz] / scale[nz], s.imag[nz] / scale[nz]) for s in (s1, s2))
    expected = (ar * br + ai * bi) / (ar * ar + ai * ai + br * br + bi * bi)
    np.testing.assert_allclose(uni[nz], expected, atol=1e-7)


@props(100)
@given(unit1=hnp.arrays(np.float64, spatial_shapes,
                        elements=st.one_of(finite, st.floats(-1.0, 4096.0),
                                           st.sampled_from([math.nan, math.inf, 4095.0]))))
def test_uni_from_unit1_in_range_or_value_error(unit1):
    try:
        with no_float_warnings():
            uni = uni_from_unit1(unit1)
    except ValueError as err:
        assert "UNIT1" in str(err)
        finite_in = unit1[np.isfinite(unit1)]
        assert (finite_in.size == 0 or finite_in.max() > 4096.0 or finite_in.min() < -1.0
                or finite_in.max() <= 1.0)
        return
    assert uni.shape == unit1.shape and uni.dtype == np.float32
    assert np.all(np.isnan(uni[~np.isfinite(unit1)]))
    good = uni[np.isfinite(unit1)]
    assert np.all(np.isfinite(good)) and np.all(np.abs(good) <= 0.5)


@props(150)
@given(
    phase=hnp.arrays(np.float64, spatial_shapes, elements=st.one_of(
        finite, st.floats(-4096.0, 4096.0), st.floats(-7.0, 7.0),
        st.sampled_from([math.nan, -math.inf]))),
    units=st.sampled_from([None, "rad", "radians", "deg", "degrees", "arbitrary", "Hz"]),
)
def test_phase_to_radians_bounded_or_value_error(phase, units):
    try:
        with no_float_warnings():
            rad, decision = phase_to_radians(phase, units)
    except ValueError as err:
        assert "phase" in str(err)
        return
    assert rad.shape == phase.shape and rad.dtype == np.float32 and decision
    finite_in = np.isfinite(phase)
    assert np.all(np.isfinite(rad[finite_in]))
    assert not np.any(np.isfinite(rad[~finite_in]))
    assert np.all(np.abs(rad[finite_in]) <= 2 * np.pi * 1.001 + 1e-6)


@props(50)
@given(mag=hnp.arrays(np.float32, (3,), elements=finite32),
       phase=hnp.arrays(np.float32, (3,), elements=st.floats(-7.0, 7.0, width=32)))
def test_complex_signal_keeps_the_magnitude(mag, phase):
    with no_float_warnings():
        z = complex_signal(mag, phase)
    assert z.dtype == np.complex64
    np.testing.assert_allclose(np.abs(z.astype(np.complex128)), np.abs(mag), rtol=1e-6,
                               atol=4e-45)  # float32 subnormals round coarsely


@props(120, suppress_health_check=[HealthCheck.too_slow])  # 2-D lookup tables (~0.1 s each)
@given(
    protocol=st.one_of(fixed_protocols, mp2rage_protocols()),
    uni=hnp.arrays(np.float32, spatial_shapes, elements=st.one_of(
        st.floats(-1.0, 1.0, width=32), st.floats(-0.5, 0.5, width=32),
        st.sampled_from([math.nan, 0.5, -0.5, 0.0]))),
    b1_kind=st.sampled_from(["none", "none", "scalar", "map"]),
    data=st.data(),
)
def test_fit_t1_mp2rage_valid_in_range_or_invalid(protocol, uni, b1_kind, data):
    b1 = None
    if b1_kind == "scalar":
        b1 = data.draw(st.floats(-1.0, 3.0), label="b1")
    elif b1_kind == "map":
        b1 = data.draw(hnp.arrays(np.float64, uni.shape, elements=st.one_of(
            st.floats(0.3, 2.0), finite, st.sampled_from([math.nan, math.inf]))), label="b1")
    mask = data.draw(st.one_of(st.none(), hnp.arrays(np.bool_, uni.shape)), label="mask")
    t1_range = data.draw(st.sampled_from([(0.05, 5.0), (0.2, 3.0)]), label="t1_range_s")
    b1_range = data.draw(st.sampled_from([(0.5, 1.6), (0.9, 1.1)]), label="b1_range")
    with no_float_warnings():
        fit = fit_t1_mp2rage(uni, protocol, b1=b1, mask=mask, t1_range_s=t1_range,
                             b1_range=b1_range)
    assert fit.t1_s.shape == uni.shape
    _check_t1_r1(fit.t1_s, fit.r1_per_s, fit.valid, *t1_range)
    assert not np.any(fit.valid[~np.isfinite(uni)])
    assert not np.any(fit.valid[np.abs(uni) > 0.5])
    if mask is not None:
        assert not np.any(fit.valid[~mask])
    if b1 is not None:
        b1_map = np.broadcast_to(b1, uni.shape)
        lo, hi = b1_range
        in_range = np.isfinite(b1_map) & (b1_map >= lo * (1 - 1e-6)) & (b1_map <= hi * 1.000001)
        assert not np.any(fit.valid[~in_range])
    else:
        # one B1: T1 decreases with UNI along the monotonic branch
        u, t = uni[fit.valid].astype(np.float64), fit.t1_s[fit.valid].astype(np.float64)
        order = np.argsort(u, kind="stable")
        assert np.all(np.diff(t[order]) <= 1e-6 * t[order][:-1])
    if max(protocol.flip_angles_deg) <= 30.0 and fit.valid.any():
        # every valid T1 explains its voxel's UNI (at the voxel's B1): no T1 mixed from two
        # branches of neighbouring B1 rows. 1e-4 for the usual protocols; 5e-3 for
        # arbitrary ones, whose UNI(T1) can move by several % per 0.01 B1 (table rows).
        # (Readout angles far beyond MP2RAGE practice give UNI(T1) features finer than
        # the 4096-sample tables resolve: not checked.)
        b1_v = np.broadcast_to(1.0 if b1 is None else b1, uni.shape)[fit.valid]
        model = mp._uni_model(fit.t1_s[fit.valid].astype(np.float64), protocol, b1_v)
        usual = protocol in (P3T, P_TIGHT, P7T)
        np.testing.assert_allclose(model, uni[fit.valid], atol=1e-4 if usual else 5e-3)


@props(60)
@given(protocol=fixed_protocols,
       uni=hnp.arrays(np.float64, (3,), elements=st.one_of(
           st.floats(-1.0, 1.0), st.sampled_from([math.nan, math.inf]), finite)))
def test_fit_t1_mp2rage_rejects_what_is_not_uni(protocol, uni):
    """Finite values beyond [-1, 1] (e.g. UNIT1 0-4095, or beyond float32) are refused."""
    finite_in = uni[np.isfinite(uni)]
    if finite_in.size and np.abs(finite_in).max() > 1.0:
        with pytest.raises(ValueError, match="UNI values span"):
            fit_t1_mp2rage(uni, protocol)
    else:
        with no_float_warnings():
            fit = fit_t1_mp2rage(uni, protocol)
        assert not np.any(fit.valid[~np.isfinite(uni)])


def _single_humped(protocol, b1, t1_range=(0.05, 5.0)):
    """UNI(T1) rises, falls, rises at most once each (ignoring float64 noise)."""
    u = mp._uni_model(np.geomspace(*t1_range, 4096), protocol, np.array(b1))
    step = np.diff(u)
    signs = np.sign(step[np.abs(step) > 1e-12])
    return np.count_nonzero(np.diff(signs)) <= 2 and not (signs.size and signs[0] < 0
                                                          and np.any(np.diff(signs) < 0))


@props(80)
@given(protocol=mp2rage_protocols(realistic=True), fraction=st.floats(0.01, 0.99),
       b1=st.one_of(st.none(), st.floats(0.8, 1.2)), m0=st.floats(1e-3, 1e6),
       phase=st.floats(-math.pi, math.pi))
def test_mp2rage_round_trip_on_the_monotonic_branch(protocol, fraction, b1, m0, phase):
    """signals -> UNI -> T1 recovers T1 on the monotonic branch, with or without a B1 map.

    From 1 % to 99 % of the branch (in log T1), wherever the protocol is sensitive to T1
    (``s = |dUNI / d ln T1| >= 0.01``) the voxel is valid and T1 within 0.01 % with the
    one-dimensional table (no B1 map), within 0.5 % with the B1 table (0.2 % for
    ``s >= 0.05``; T1 is interpolated between B1 rows 0.01 apart). Where UNI is flat in T1
    (branch ends, protocols whose UNI saturates near 0.5) the float32 rounding of UNI alone
    (6e-8) costs more than that: T1 is ill-conditioned there, the lookup then only
    guarantees a T1 of the branch (or invalid).
    """
    b1_value = 1.0 if b1 is None else b1
    branch = monotonic_branch(protocol, b1_value)
    assume(np.isfinite(branch.t1_short_s))
    # the method is made for one hump (rise, fall, rise) of UNI(T1) over the B1 table rows
    # around the voxel; with several humps UNI alone cannot tell them apart
    assume(all(_single_humped(protocol, b) for b in (b1_value - 0.03, b1_value,
                                                      b1_value + 0.04)))
    t1 = math.exp((1 - fraction) * math.log(branch.t1_short_s)
                  + fraction * math.log(branch.t1_long_s))
    s1, s2 = mp2rage_signals(np.array([t1]), protocol, b1=b1_value, m0=m0)
    # a common background phase must cancel (complex data with the conjugate in UNI)
    rot = np.exp(1j * phase)
    # a narrow B1 table (6 rows around the voxel's B1, which falls between rows) keeps the
    # test fast; the default 0.5-1.6 table is exercised with the fixed protocols above
    b1_range = (b1_value - 0.023, b1_value + 0.031)
    with no_float_warnings():
        uni = uni_from_signals(s1 * rot, s2 * rot)
        fit = fit_t1_mp2rage(uni, protocol, b1=None if b1 is None else np.array([b1]),
                             b1_range=b1_range)
    _check_t1_r1(fit.t1_s, fit.r1_per_s, fit.valid, 0.05, 5.0)
    h = 1e-4
    u_lo, u_hi = mp._uni_model(np.array([t1 * (1 - h), t1 * (1 + h)]), protocol,
                               np.array(b1_value))
    sensitivity = abs(u_hi - u_lo) / (2 * h)
    if sensitivity >= 0.01:
        assert fit.valid.all()
        rtol = 1e-4 if b1 is None else 2e-3 if sensitivity >= 0.05 else 5e-3
        np.testing.assert_allclose(fit.t1_s, t1, rtol=rtol)
    if fit.valid.all():
        assert branch.t1_short_s * 0.99 <= fit.t1_s[0] <= branch.t1_long_s * 1.01


@props(25, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5),
    data=st.data(),
)
def test_recover_inv1_sign_never_changes_magnitudes(shape, data):
    mags = st.one_of(st.floats(0.0, 1e4), finite32)
    inv1 = data.draw(hnp.arrays(np.float64, shape, elements=mags), label="inv1")
    inv2 = data.draw(hnp.arrays(np.float64, shape, elements=mags), label="inv2")
    b1 = data.draw(st.one_of(st.none(), hnp.arrays(np.float64, shape,
                                                   elements=st.floats(0.3, 2.0))), label="b1")
    mask = data.draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)), label="mask")
    voxel = data.draw(st.lists(st.floats(0.1, 10.0), min_size=len(shape), max_size=3),
                      label="voxel_size_mm")
    with no_float_warnings():
        signed, ambiguous = recover_inv1_sign(inv1, inv2, P3T, b1=b1, mask=mask,
                                              voxel_size_mm=voxel)
    assert signed.shape == ambiguous.shape == shape
    assert signed.dtype == np.float32 and ambiguous.dtype == np.bool_
    np.testing.assert_array_equal(np.abs(signed), np.abs(inv1).astype(np.float32))
    if mask is not None:
        assert not np.any(ambiguous[~mask]) and np.all(signed[~mask] >= 0)


# ----------------------------------------------------------------------------- uptake

#: R1 values as the fits return them: float32, > 0 and finite where valid.
r1_valid = st.floats(min_value=np.finfo(np.float32).smallest_subnormal, max_value=F32_MAX,
                     width=32)
relaxivity = st.floats(0.1, 100.0)


@props(100)
@given(
    r1=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(2)),
                  elements=st.one_of(r1_valid, st.just(0.0))),
    r1_agent=relaxivity,
    molar_mass=st.floats(100.0, 1e6),
    n_gd=st.floats(1.0, 100.0),
)
def test_concentrations_finite_wherever_both_r1_valid(r1, r1_agent, molar_mass, n_gd):
    """The ComputeUptake chain: ΔR1 -> mM Gd -> mg/L, NaN only where a fit was invalid."""
    post, pre = r1[:, 0], r1[:, 1]
    valid = (post > 0) & (pre > 0)
    with no_float_warnings():
        dr1 = np.where(valid, delta_r1(post, pre), np.nan)
        gd = gd_concentration_mM(dr1, r1_agent)
        mass = mass_concentration_mg_per_L(gd, molar_mass, n_gd)
    for arr in (dr1, gd, mass):
        assert arr.dtype == np.float64 and arr.shape == post.shape
        assert np.all(np.isfinite(arr[valid])) and np.all(np.isnan(arr[~valid]))
    # negatives are kept, the sign follows ΔR1 (C = ΔR1 / r1 with r1 > 0)
    np.testing.assert_array_equal(np.sign(gd[valid]), np.sign(dr1[valid]))
    np.testing.assert_allclose(gd[valid] * r1_agent, dr1[valid], rtol=1e-12)


@props(60)
@given(bad=st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, "x", None]))
def test_uptake_rejects_invalid_constants_by_name(bad):
    with pytest.raises(ValueError, match="relaxivity"):
        gd_concentration_mM(1.0, bad)
    with pytest.raises(ValueError, match="particle_molar_mass"):
        mass_concentration_mg_per_L(1.0, bad, 10)
    with pytest.raises(ValueError, match="gd_per_particle"):
        mass_concentration_mg_per_L(1.0, 1e4, bad)


signal32 = st.one_of(finite32, st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))


@props(100)
@given(
    post=hnp.arrays(np.float64, (5,), elements=signal32),
    pre=hnp.arrays(np.float64, (5,), elements=signal32),
    min_pre=st.one_of(st.just(0.0), st.floats(0.0, 1e3)),
)
def test_signal_enhancement_finite_or_nan(post, pre, min_pre):
    with no_float_warnings():
        se = signal_enhancement_percent(post, pre, min_pre=min_pre)
    assert se.shape == post.shape and se.dtype == np.float64
    ok = np.isfinite(post) & np.isfinite(pre) & (pre > min_pre)
    # documented: NaN where S_pre <= min_pre or either signal is non-finite
    assert np.all(np.isnan(se[~ok]))
    assert np.all(np.isfinite(se[ok]))
    np.testing.assert_allclose(se[ok], 100.0 * (post[ok] - pre[ok]) / pre[ok], rtol=1e-12)
    # magnitude signals can at most vanish: SE >= -100 %
    assert np.all(se[ok & (post >= 0)] >= -100.0)


dose_like = st.one_of(st.none(), st.sampled_from([0.0, math.nan, math.inf, -1.0]),
                      st.floats(1e-3, 1e4))


@props(100)
@given(mass=finite32, dose=dose_like, weight=dose_like,
       reference=st.floats(1e-3, 1e4))
def test_dose_normalisations_nan_for_missing_doses(mass, dose, weight, reference):
    def known(x):
        return x is not None and math.isfinite(x) and x > 0

    for value in (dose, weight):
        if value is not None and value < 0:
            with pytest.raises(ValueError, match="must be >= 0"):
                percent_injected_dose_per_g(mass, dose, weight)
            return
    with no_float_warnings():
        pid = float(percent_injected_dose_per_g(mass, dose, weight))
        norm = float(dose_normalised(mass, dose, reference))
    if known(dose) and known(weight):
        assert math.isfinite(pid)
        assert pid == pytest.approx(100.0 * mass * 1e-3 / (dose * weight), rel=1e-12)
    else:  # placebo, unknown or absurd dose / weight: never a plausible number
        assert math.isnan(pid)
    if known(dose):
        assert norm == pytest.approx(mass * reference / dose, rel=1e-12)
    else:
        assert math.isnan(norm)


# ----------------------------------------------------------------------------- regressions
# Minimal failing examples found by the properties above (see the fixes' comments).


def test_regression_vfa_invalid_voxels_hold_zero_with_a_tiny_tr():
    # R1 placeholder of an invalid voxel is 0.69 / 1e-300 = inf in float32; inf * 0 gave NaN
    with no_float_warnings():
        fit = fit_vfa(np.zeros((1, 2)), [1e-6, 0.5], 1e-300)
    assert not fit.valid[0]
    assert fit.t1_s[0] == 0 and fit.r1_per_s[0] == 0 and fit.m0[0] == 0


@pytest.mark.parametrize("tr", [1e-44, 1e-40, 1e-300])
def test_regression_vfa_never_valid_with_infinite_r1(tr):
    # was valid with R1 = inf and T1 rounded to 0 (or 6e-45) in float32
    signals = spgr_signal(100.0, tr / 2, [5.0, 30.0], tr)[np.newaxis]
    with no_float_warnings():
        fit = fit_vfa(signals, [5.0, 30.0], tr)
    _check_t1_r1(fit.t1_s, fit.r1_per_s, fit.valid)
    assert not fit.valid[0]


@pytest.mark.parametrize("method", VFA_METHODS)
def test_regression_vfa_m0_below_float32_is_invalid(method):
    # M0 = 1e-50 rounded to 0 in float32 in a "valid" voxel (wlls / nlls promise M0 > 0)
    signals = spgr_signal(1e-50, 1.0, [5.0, 20.0], 0.015)[np.newaxis]
    with no_float_warnings():
        fit = fit_vfa(signals, [5.0, 20.0], 0.015, method=method)
    assert not fit.valid[0] and fit.m0[0] == 0


@pytest.mark.parametrize("b1", [2.2e304, 1.7e308, 1e13, 20.0])
def test_regression_vfa_absurd_b1_does_not_crash_or_depend_on_chunks(b1):
    # b1 > 2.2e304 raised "ValueError: cannot convert float NaN to integer" (k = inf)
    flips = [5.0, 15.0]
    signals = spgr_signal([100.0, 200.0, 300.0], 1.0, flips, 0.015, b1=[0.9137, b1, 1.0371])
    b1_map = np.array([0.9137, b1, 1.0371])
    with no_float_warnings():
        whole = fit_vfa(signals, flips, 0.015, b1=b1_map)
        single = fit_vfa(signals, flips, 0.015, b1=b1_map, chunk_voxels=1)
    for a, b in zip(whole, single, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(whole.t1_s[[0, 2]], 1.0, rtol=1e-5)


def test_regression_uni_from_signals_overflowing_squares():
    # |S|^2 overflowed (1e200) or underflowed (1e-170): UNI 0, a valid-looking value
    with no_float_warnings():
        uni = uni_from_signals(np.array([1e200, 1e-170, 1e308 + 1e308j]),
                               np.array([-1e200, -1e-170, 1e308 + 1e308j]))
    np.testing.assert_array_equal(uni, [-0.5, -0.5, 0.5])


def test_regression_unit1_and_phase_beyond_float32_are_rejected():
    # 3.5e38 (float64) overflowed to inf in the float32 cast (RuntimeWarning) and was then
    # silently dropped as "non-finite" instead of rejected
    with no_float_warnings():
        with pytest.raises(ValueError, match="not the scanner 0-4095 scale"):
            uni_from_unit1(np.array([3.5e38, 100.0]))
        with pytest.raises(ValueError, match="cannot tell the units"):
            phase_to_radians(np.array([3.5e38, 1.0]))
        with pytest.raises(ValueError, match="UNI values span"):
            fit_t1_mp2rage(np.array([1e39, 0.0]), P3T)
        fit = fit_t1_mp2rage(np.array([0.1, 0.1]), P3T, b1=np.array([3.5e38, 1.0]))
    np.testing.assert_array_equal(fit.valid, [False, True])


def test_regression_lookup_of_an_unresolvable_uni_range():
    # UNI range ~1e-41 (flip 1e-47 deg): 1 / half overflowed float32 with a warning
    protocol = MP2RAGEProtocol(0.0625, 0.015625, (0.015625, 0.046875), (1.4e-47, 1e-6), 1, 1,
                               1.0)
    with no_float_warnings():
        fit = fit_t1_mp2rage(np.array([0.0, 1e-42], np.float32), protocol)
        branch = monotonic_branch(protocol)
    assert not fit.valid.any() and math.isnan(branch.t1_short_s)


def test_regression_lookup_with_a_flat_uni_maximum():
    # 2 deg readouts: UNI saturates at 0.5 for short T1 and float64 noise (1e-16 steps) on
    # that plateau cut the branch to 0.05-0.0502 s (B1 0.88) or dropped the row (0.89):
    # a well-conditioned T1 of 2.6 s at B1 0.86 was invalid with the default B1 table
    protocol = MP2RAGEProtocol(3.32, 0.01, (0.83, 2.49), (2.0, 2.0), 83, 83, 0.86)
    for b1 in (0.86, 0.88, 0.89):
        branch = monotonic_branch(protocol, b1)
        assert branch.t1_long_s == 5.0 and branch.t1_short_s < 0.08
    t1 = np.array([0.3, 1.0, 2.6, 4.0])
    b1 = np.array([0.86, 0.875, 0.885, 0.89])
    s1, s2 = mp2rage_signals(t1, protocol, b1=b1)
    with no_float_warnings():
        fit = fit_t1_mp2rage(uni_from_signals(s1, s2), protocol, b1=b1)
    assert fit.valid.all()
    np.testing.assert_allclose(fit.t1_s, t1, rtol=1e-3)


def test_regression_signal_enhancement_of_an_infinite_post_signal_is_nan():
    # documented NaN "where either signal is non-finite"; S_post = inf gave inf (and
    # inf - inf warnings when both were inf)
    with no_float_warnings():
        se = signal_enhancement_percent(np.array([np.inf, -np.inf, np.inf, 150.0]),
                                        np.array([1.0, 1.0, np.inf, 100.0]))
    np.testing.assert_array_equal(se, [np.nan, np.nan, np.nan, 50.0])


def test_regression_infinite_dose_or_weight_is_not_a_dose():
    # +inf dose gave 0 %ID/g and a dose-normalised 0: plausible-looking numbers
    assert math.isnan(float(percent_injected_dose_per_g(60.0, np.inf, 70.0)))
    assert math.isnan(float(percent_injected_dose_per_g(60.0, 100.0, np.inf)))
    assert math.isnan(float(dose_normalised(60.0, np.inf)))
    assert float(percent_injected_dose_per_g(60.0, 100.0, 60.0)) == pytest.approx(0.001)


def test_regression_lookup_never_mixes_two_branches_across_b1_rows():
    # UNI(T1) with two humps (TI1 ~ TI2): adjacent B1 rows of the table picked different
    # humps, and bilinear interpolation between them returned valid T1s whose UNI was off
    # by up to 0.29 (374 of 784 valid voxels over B1 0.97-1.03)
    protocol = MP2RAGEProtocol(1.84375, 0.0078125, (0.7578125, 0.8046875), (7.75, 8.0), 1, 5,
                               1.0)
    uni = np.tile(np.linspace(-0.5, 0.5, 401).astype(np.float32), 61)
    b1 = np.repeat(np.linspace(0.97, 1.03, 61), 401)
    with no_float_warnings():
        fit = fit_t1_mp2rage(uni, protocol, b1=b1)
    model = mp._uni_model(fit.t1_s[fit.valid].astype(np.float64), protocol, b1[fit.valid])
    np.testing.assert_allclose(model, uni[fit.valid], atol=1e-3)
