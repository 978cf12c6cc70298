"""MP2RAGE signal model and contrasts: steady-state signals, UNI, UNIT1 and phase images."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .protocol import MP2RAGEProtocol

#: Full scale of the scanner ``UNIT1`` image: ``UNIT1 = UNIT1_SCALE * (UNI + 0.5)``.
UNIT1_SCALE = 4095.0

#: Voxels processed at once by :func:`fit_t1_mp2rage` (float32 temporaries of a few tens of MB).
DEFAULT_CHUNK_VOXELS = 1 << 20


# ------------------------------------------------------------------------------- signal model


def _memory_order(arr: np.ndarray) -> str:
    """``"F"`` for Fortran-contiguous arrays (nibabel data), else ``"C"``: the order in which
    all arrays of one computation are flattened and their results reshaped."""
    return "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


def _compose(first: tuple, then: tuple) -> tuple:
    """Compose two affine maps ``m -> a m + b`` (apply ``first``, then ``then``)."""
    return then[0] * first[0], then[0] * first[1] + then[1]


def mp2rage_signals(
    t1_s: ArrayLike,
    protocol: MP2RAGEProtocol,
    b1: ArrayLike = 1.0,
    m0: ArrayLike = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state MP2RAGE signals at the k-space centre of both readout trains.

    Closed form (no time stepping): every event of the cycle (inversion, free relaxation
    over a gap, a train of ``n`` ``[pulse, relax tau_k]`` steps) is an affine map of the
    longitudinal magnetisation ``Mz -> a Mz + b`` (with ``M0 = 1``); a train of ``n`` steps
    with ``q = cos(b1 alpha_k) E_k``, ``E_k = exp(-tau_k/T1)`` is ``a = q^n``,
    ``b = (1 - E_k)(1 - q^n)/(1 - q)``. Each train uses its own echo spacing ``tau_k``
    (:attr:`MP2RAGEProtocol.repetition_times_excitation_s`; MP2RAGE-ME has a longer one on
    INV2). The periodic steady state before the inversion is the fixed point
    ``m = b_cycle / (1 - a_cycle)`` of the whole cycle, from which ``Mz(TI1^-)`` and
    ``Mz(TI2^-)`` follow. The timing convention is described in the docstring of the
    :mod:`bids_agquant.qmri.mp2rage` package.

    Parameters
    ----------
    t1_s : array_like
        T1 in seconds (> 0; other values give NaN).
    protocol : MP2RAGEProtocol
        Acquisition parameters.
    b1 : array_like, optional
        B1+ as a fraction of nominal (scales both readout flip angles). Default 1.
    m0 : array_like, optional
        Equilibrium magnetisation times receive gain. Default 1.

    Returns
    -------
    s1, s2 : numpy.ndarray of float64
        Signed real signals ``M0 Mz(TIk^-) sin(b1 alpha_k)``, with the broadcast shape of
        ``t1_s``, ``b1`` and ``m0``.
    """
    p = protocol
    # The inversion is B1-independent (adiabatic): a constant preparation factor -eff.
    return _two_train_signals(
        t1_s,
        b1,
        m0,
        repetition_time_preparation_s=p.repetition_time_preparation_s,
        echo_spacings_s=p.repetition_times_excitation_s,
        centre_times_s=p.inversion_times_s,
        flip_angles_deg=p.flip_angles_deg,
        shots=(p.shots_before, p.shots_after),
        preparation=-p.inversion_efficiency,
    )


def _two_train_signals(
    t1_s: ArrayLike,
    b1: ArrayLike,
    m0: ArrayLike,
    *,
    repetition_time_preparation_s: float,
    echo_spacings_s: tuple[float, float],
    centre_times_s: tuple[float, float],
    flip_angles_deg: tuple[float, float],
    shots: tuple[float, float],
    preparation: ArrayLike,
) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state k-space-centre signals of a prepared two-train sequence (MP2RAGE, SA2RAGE).

    One cycle of ``repetition_time_preparation_s``: at ``t = 0`` an instantaneous preparation
    ``Mz -> preparation * Mz`` (``-eff`` for the MP2RAGE inversion, ``cos(b1 theta_sat)`` for
    the SA2RAGE saturation), then two spoiled-GRE trains. Train ``k`` has ``shots[0]``
    ``[pulse b1 alpha_k, relax tau_k]`` steps before its k-space centre at
    ``centre_times_s[k]`` and ``shots[1]`` from it (the centre pulse is the first of those),
    with its own echo spacing ``tau_k`` (MP2RAGE-ME: a longer one on the multi-echo INV2
    train). Every event is an affine map of ``Mz`` and the steady state is the fixed point of
    their composition (see :func:`mp2rage_signals`).

    Parameters
    ----------
    t1_s : array_like
        T1, s (> 0; other values give NaN).
    b1 : array_like
        B1+ as a fraction of nominal; scales both readout flip angles (the preparation factor
        is given separately, already evaluated at this B1 when it depends on it).
    m0 : array_like
        Equilibrium magnetisation times receive gain.
    repetition_time_preparation_s : float
        Cycle length (preparation to preparation), s.
    echo_spacings_s : tuple of 2 float
        Echo spacing ``tau_k`` of each train, s.
    centre_times_s : tuple of 2 float
        Time from the preparation to each train's k-space-centre pulse, s.
    flip_angles_deg : tuple of 2 float
        Nominal readout flip angles, degrees.
    shots : tuple of 2 float
        Steps before and from the k-space centre (the same for both trains). They may be
        non-integer (SA2RAGE counts with partial Fourier and parallel imaging): a train of
        ``n`` steps is the map ``q^n``, real for ``q = cos(b1 alpha) exp(-tau/T1) > 0``;
        a non-integer count with ``b1 alpha > 90`` degrees gives NaN.
    preparation : array_like
        Factor of the preparation pulse (broadcast with ``t1_s``, ``b1``, ``m0``).

    Returns
    -------
    s1, s2 : numpy.ndarray of float64
        Signed signals ``m0 Mz(centre_k^-) sin(b1 alpha_k)`` in the broadcast shape.

    Notes
    -----
    The timing is assumed feasible (checked by the protocol classes); a negative gap is
    clamped to 0. With integer shots, equal echo spacings and ``preparation = -eff`` every
    operation is the one of the single-spacing MP2RAGE model, so the results (and the cached
    lookup tables built from them) are bit-identical to it.
    """
    t1 = np.asarray(t1_s, dtype=np.float64)
    b1_a = np.asarray(b1, dtype=np.float64)
    m0_a = np.asarray(m0, dtype=np.float64)
    tau1, tau2 = (float(t) for t in echo_spacings_s)
    n_b, n_a = shots
    ti1, ti2 = centre_times_s
    alpha1, alpha2 = np.deg2rad(flip_angles_deg[0]), np.deg2rad(flip_angles_deg[1])
    gaps = (
        max(ti1 - n_b * tau1, 0.0),
        max((ti2 - n_b * tau2) - (ti1 + n_a * tau1), 0.0),
        max(repetition_time_preparation_s - (ti2 + n_a * tau2), 0.0),
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r1 = np.where(t1 > 0, 1.0 / t1, np.nan)

        def relax(gap: float) -> tuple:
            return np.exp(-gap * r1), -np.expm1(-gap * r1)

        def trains(alpha: float, tau: float) -> tuple[tuple, tuple]:
            """Affine maps of the ``n_b`` and ``n_a`` [pulse, relax tau] steps at ``alpha``."""
            e_tau = np.exp(-tau * r1)
            one_minus_e_tau = -np.expm1(-tau * r1)
            cos_a = np.cos(b1_a * alpha)
            # 1 - q = (1 - E) + E (1 - cos), written without cancellation
            one_minus_q = one_minus_e_tau + e_tau * (2.0 * np.sin(0.5 * b1_a * alpha) ** 2)
            if np.all(cos_a > 0):
                # q^n = exp(n log q), cheaper than a float power
                log_q = np.log(cos_a) - tau * r1
                q_nb, q_na = np.exp(n_b * log_q), np.exp(n_a * log_q)
            else:
                q = cos_a * e_tau
                q_nb, q_na = q**n_b, q**n_a
            scale = one_minus_e_tau / one_minus_q
            return (q_nb, scale * (1.0 - q_nb)), (q_na, scale * (1.0 - q_na))

        before1, after1 = trains(alpha1, tau1)
        before2, after2 = trains(alpha2, tau2)
        prep = (np.asarray(preparation, dtype=np.float64), 0.0)
        to_ti1 = _compose(_compose(prep, relax(gaps[0])), before1)
        ti1_to_ti2 = _compose(_compose(after1, relax(gaps[1])), before2)
        ti2_to_end = _compose(after2, relax(gaps[2]))
        a_cyc, b_cyc = _compose(_compose(to_ti1, ti1_to_ti2), ti2_to_end)
        m_start = b_cyc / (1.0 - a_cyc)
        mz1 = to_ti1[0] * m_start + to_ti1[1]
        mz2 = ti1_to_ti2[0] * mz1 + ti1_to_ti2[1]
        s1 = m0_a * mz1 * np.sin(b1_a * alpha1)
        s2 = m0_a * mz2 * np.sin(b1_a * alpha2)
    return s1, s2


# ---------------------------------------------------------------------------------- UNI image


def uni_from_signals(
    s1: ArrayLike, s2: ArrayLike, *, chunk_voxels: int = DEFAULT_CHUNK_VOXELS
) -> np.ndarray:
    """MP2RAGE UNI contrast ``Re(conj(S1) S2) / (|S1|^2 + |S2|^2)``.

    Marques et al. 2010, eq. 3, with the complex conjugate: it depends only on the phase
    *difference* of INV1 and INV2, so a common background phase cancels. (qMRLab and pymp2rage
    use ``Re(S1 S2 / (S1^2 + S2^2))`` without the conjugate, which is only correct when the
    phase difference is 0 or pi.)

    Parameters
    ----------
    s1, s2 : array_like
        INV1 and INV2 signals, real (signed) or complex, same shape.
    chunk_voxels : int, optional
        Voxels processed at once (computation is in float64).

    Returns
    -------
    numpy.ndarray of float32
        UNI in ``[-0.5, 0.5]``; **0** where ``|S1|^2 + |S2|^2 == 0`` or an input is non-finite
        (mask such voxels: 0 is a valid UNI value, T1 near the zero crossing of INV1).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    a = np.asarray(s1)
    b = np.asarray(s2)
    if a.shape != b.shape:
        raise ValueError(f"INV1 and INV2 shapes differ: {a.shape} vs {b.shape}")
    order = _memory_order(a)
    a_flat = a.reshape(-1, order=order)
    b_flat = b.reshape(-1, order=order)
    out = np.zeros(a_flat.size, dtype=np.float32)
    step = max(int(chunk_voxels), 1)
    for start in range(0, a_flat.size, step):
        sl = slice(start, start + step)
        x = a_flat[sl]
        y = b_flat[sl]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if np.iscomplexobj(x) or np.iscomplexobj(y):
                x = x.astype(np.complex128, copy=False)
                y = y.astype(np.complex128, copy=False)
                num = x.real * y.real + x.imag * y.imag
                den = x.real**2 + x.imag**2 + y.real**2 + y.imag**2
            else:
                x = x.astype(np.float64, copy=False)
                y = y.astype(np.float64, copy=False)
                num = x * y
                den = x * x + y * y
            ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
            uni = np.divide(num, den, out=np.zeros_like(num), where=ok)
            # Finite, not both zero, but the squares overflow (|S| > ~1e154) or underflow
            # (|S| < ~1e-162): UNI is scale-free, so recompute those few voxels on signals
            # divided by max(|S1|, |S2|) instead of returning 0, a valid-looking UNI (T1
            # near the INV1 zero crossing).
            redo = ~ok & np.isfinite(x) & np.isfinite(y) & ((x != 0) | (y != 0))
            if redo.any():
                parts = [x[redo].real, x[redo].imag, y[redo].real, y[redo].imag]
                if not np.iscomplexobj(x):
                    parts = parts[::2]
                scale = np.maximum.reduce([np.abs(part) for part in parts])
                parts = [part / scale for part in parts]  # largest |part| is 1: no overflow
                if len(parts) == 4:
                    num_r = parts[0] * parts[2] + parts[1] * parts[3]
                else:
                    num_r = parts[0] * parts[1]
                uni[redo] = num_r / sum(part * part for part in parts)
        np.clip(uni, -0.5, 0.5, out=uni)
        out[sl] = uni
    return out.reshape(a.shape, order=order)


def choose_uni_source(*, has_magnitudes: bool, has_phases: bool, has_unit1: bool) -> str:
    """Which images give the UNI contrast of an MP2RAGE acquisition.

    Complex INV1/INV2 (magnitude and phase) give UNI directly with its sign and are preferred;
    then the scanner's own UNIT1 image; magnitudes alone come last, because the sign of INV1
    must then be recovered (:func:`recover_inv1_sign`).

    Parameters
    ----------
    has_magnitudes : bool
        INV1 and INV2 magnitude images both exist.
    has_phases : bool
        INV1 and INV2 phase images both exist.
    has_unit1 : bool
        The scanner's UNIT1 image exists.

    Returns
    -------
    str
        ``"complex"``, ``"unit1"`` or ``"magnitude"``.

    Raises
    ------
    ValueError
        Neither both magnitudes nor a UNIT1 image: UNI cannot be formed.
    """
    if has_magnitudes and has_phases:
        return "complex"
    if has_unit1:
        return "unit1"
    if has_magnitudes:
        return "magnitude"
    raise ValueError("MP2RAGE needs INV1 and INV2 magnitudes or a UNIT1 image")


def uni_from_unit1(unit1: ArrayLike) -> np.ndarray:
    """Convert a scanner ``UNIT1`` image (0-4095 scale) to UNI: ``unit1 / 4095 - 0.5``.

    Parameters
    ----------
    unit1 : array_like
        The ``UNIT1`` image as stored by the scanner (Siemens: 12-bit, 0-4095).

    Returns
    -------
    numpy.ndarray of float32
        UNI in ``[-0.5, 0.5]`` (values up to 4096 are clipped to 0.5); non-finite values stay
        NaN (they are invalid in :func:`fit_t1_mp2rage`).

    Raises
    ------
    ValueError
        If the image has no finite value, or its finite values are clearly not on the
        0-4095 scale: maximum above 4096, minimum below -1, or maximum at most 1 (the image
        is probably already a UNI in ``[-0.5, 0.5]``).
    """
    arr = np.asarray(unit1)
    finite, vmin, vmax = _finite_range(arr)
    if not finite.any():
        raise ValueError("UNIT1 image has no finite value")
    if vmax > UNIT1_SCALE + 1.0 or vmin < -1.0:
        raise ValueError(
            f"UNIT1 values span [{vmin:.6g}, {vmax:.6g}], not the scanner 0-4095 scale; "
            "give UNI in [-0.5, 0.5] directly or rescale the image"
        )
    if vmax <= 1.0:
        raise ValueError(
            f"UNIT1 values span [{vmin:.6g}, {vmax:.6g}]: this looks like a UNI image already "
            "in [-0.5, 0.5] (or an empty image), not the scanner 0-4095 scale"
        )
    values = arr.astype(np.float32, copy=False)  # finite values are in [-1, 4096] here
    out = values / np.float32(UNIT1_SCALE) - np.float32(0.5)
    np.clip(out, -0.5, 0.5, out=out)
    out[~finite] = np.nan
    return out.astype(np.float32, copy=False)


def _finite_range(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Finite mask, min and max of the finite values (+inf, -inf if none) of ``arr``.

    Computed in the input precision (float32 for narrower types): a float64 value beyond
    the float32 range is finite and must be judged as such, not cast to inf first (which
    warned and then silently dropped the value as "non-finite").
    """
    if arr.dtype.kind == "f" and arr.dtype.itemsize >= 8:
        values = arr
    else:
        values = arr.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    vmin = float(values.min(where=finite, initial=np.inf))
    vmax = float(values.max(where=finite, initial=-np.inf))
    return finite, vmin, vmax


_RADIAN_UNITS = frozenset({"rad", "rads", "radian", "radians"})
_DEGREE_UNITS = frozenset({"deg", "degree", "degrees", "°"})


def phase_to_radians(phase: ArrayLike, units: str | None = None) -> tuple[np.ndarray, str]:
    """Return a phase image in radians, with a description of the decision.

    Parameters
    ----------
    phase : array_like
        Phase image as stored.
    units : str, optional
        The sidecar ``"Units"``. ``"rad"`` / ``"radian(s)"`` mean radians (used as they are),
        ``"deg"`` / ``"degree(s)"`` degrees. Anything else (``None``, ``"arbitrary"``, ...)
        lets the finite values decide:

        * ``max |phase| <= pi`` (0.1 % slack): radians in ``[-pi, pi]``;
        * ``0 <= phase <= 2 pi``: radians in ``[0, 2 pi)``;
        * ``-4096 <= phase <= 4096`` with negative values: Siemens / dcm2niix signed 12-bit,
          ``x * pi / 4096``;
        * ``0 <= phase <= 4096``: unsigned 12-bit, ``x * 2 pi / 4096``.

        Only phase *differences* between INV1 and INV2 matter for UNI, so a constant offset
        (``[0, 2pi)`` vs ``[-pi, pi)``) is harmless; both images must use the same convention.

    Returns
    -------
    radians : numpy.ndarray of float32
        Same shape; non-finite values stay non-finite.
    decision : str
        One human-readable sentence for the log / provenance.

    Raises
    ------
    ValueError
        If the image has no finite value, the data contradict the declared units (radians
        beyond ``2 pi``, degrees beyond 360), or the range matches none of the conventions
        above.
    """
    arr = np.asarray(phase)
    finite, vmin, vmax = _finite_range(arr)
    if not finite.any():
        raise ValueError("phase image has no finite value")
    # every accepted convention bounds the finite values by 4096: a value that overflows
    # float32 here is rejected below, before any result is returned
    with np.errstate(over="ignore"):
        values = arr.astype(np.float32, copy=False)
    vabs = max(abs(vmin), abs(vmax))
    span = f"values in [{vmin:.6g}, {vmax:.6g}]"
    norm = None if units is None else str(units).strip().lower()
    slack = 1.001
    declared = f"sidecar Units={units!r}"
    if norm in _RADIAN_UNITS:
        if vabs > 2 * np.pi * slack:
            raise ValueError(f"phase {declared} but {span} exceed 2 pi; check the sidecar")
        return values.astype(np.float32), f"phase taken as radians ({declared}; {span})"
    if norm in _DEGREE_UNITS:
        if vabs > 360.0 * slack:
            raise ValueError(f"phase {declared} but {span} exceed 360; check the sidecar")
        out = (values * np.float32(np.pi / 180.0)).astype(np.float32)
        return out, f"phase taken as degrees ({declared}; {span}); multiplied by pi/180"
    if units is None:
        declared = "no Units in the sidecar"
    else:
        declared = f"unrecognised Units={units!r}"
    radians = values.astype(np.float32)
    if vabs <= np.pi * slack:
        return radians, f"phase taken as radians in [-pi, pi] ({declared}; {span})"
    if vmin >= 0 and vmax <= 2 * np.pi * slack:
        return radians, f"phase taken as radians in [0, 2 pi] ({declared}; {span})"
    if vmin >= -4096.0 and vmax <= 4096.0:
        if vmin < 0:
            scale, what = np.pi / 4096.0, "signed 12-bit [-4096, 4095]; multiplied by pi/4096"
        else:
            scale, what = 2.0 * np.pi / 4096.0, "unsigned 12-bit [0, 4095]; multiplied by 2 pi/4096"
        out = (values * np.float32(scale)).astype(np.float32)
        return out, f"phase taken as {what} ({declared}; {span})"
    raise ValueError(
        f"cannot tell the units of the phase image ({declared}; {span}): expected radians, "
        "degrees, or 12-bit integers in [-4096, 4095] or [0, 4095]"
    )


def complex_signal(magnitude: ArrayLike, phase_rad: ArrayLike) -> np.ndarray:
    """Complex image ``magnitude * exp(1j * phase_rad)``.

    Parameters
    ----------
    magnitude : array_like
        Magnitude image.
    phase_rad : array_like
        Phase in radians (see :func:`phase_to_radians`), same shape.

    Returns
    -------
    numpy.ndarray of complex64 or complex128
        complex64 unless one input is float64 (then complex128).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    mag = np.asarray(magnitude)
    ph = np.asarray(phase_rad)
    if mag.shape != ph.shape:
        raise ValueError(f"magnitude and phase shapes differ: {mag.shape} vs {ph.shape}")
    wide = mag.dtype == np.float64 or ph.dtype == np.float64
    ftype = np.float64 if wide else np.float32
    ctype = np.complex128 if wide else np.complex64
    mag_f = mag.astype(ftype, copy=False)
    ph_f = ph.astype(ftype, copy=False)
    out = np.empty(mag.shape, dtype=ctype)
    out.real = mag_f * np.cos(ph_f)
    out.imag = mag_f * np.sin(ph_f)
    return out
