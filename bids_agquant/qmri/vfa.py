"""Variable-flip-angle (VFA) T1 mapping: SPGR signal model and linear DESPOT1 fit.

Pure numpy functions, no file I/O. Conventions:

* flip angles are in **degrees**, repetition time and T1 in **seconds**, R1 in **1/s**;
* B1+ maps are a **fraction** of nominal, so that ``alpha_eff = b1 * alpha_nominal``
  (see :func:`bids_agquant.qmri.b1.b1_to_fraction` to convert percent maps);
* the flip-angle dimension is the **last** axis of every multi-flip array.

The spoiled gradient-echo (SPGR / FLASH) steady state is

.. math::

    S(\\alpha) = M_0 \\sin(\\kappa\\alpha) \\frac{1 - E_1}{1 - E_1 \\cos(\\kappa\\alpha)},
    \\qquad E_1 = \\exp(-TR / T_1),

and its linear form (DESPOT1; Deoni, Rutt & Peters 2003) is

.. math::

    \\frac{S}{\\sin\\alpha} = E_1 \\frac{S}{\\tan\\alpha} + M_0 (1 - E_1),

so that a straight-line fit of ``y = S/sin(alpha_eff)`` against ``x = S/tan(alpha_eff)``
gives ``E1`` as the slope, ``T1 = -TR / ln(E1)`` and ``M0 = intercept / (1 - E1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["VFAFit", "fit_vfa_linear", "spgr_signal"]

#: Default number of voxels processed at once by :func:`fit_vfa_linear`. With 4 flip angles
#: the float64 temporaries of one chunk take a few tens of MB.
DEFAULT_CHUNK_VOXELS = 1 << 18


class VFAFit(NamedTuple):
    """Result of a VFA T1 fit; every array has the spatial shape of the input.

    Attributes
    ----------
    t1_s : numpy.ndarray of float32
        Longitudinal relaxation time in seconds; 0 where ``valid`` is False.
    r1_per_s : numpy.ndarray of float32
        Longitudinal relaxation rate ``1/T1`` in 1/s; 0 where ``valid`` is False.
    m0 : numpy.ndarray of float32
        Equilibrium magnetisation (scanner signal units, includes receive gain and T2*
        weighting); 0 where ``valid`` is False.
    valid : numpy.ndarray of bool
        True where the fit is usable (inside the mask, finite inputs, ``b1 > 0`` and
        ``0 < E1 < 1``).
    """

    t1_s: np.ndarray
    r1_per_s: np.ndarray
    m0: np.ndarray
    valid: np.ndarray


def spgr_signal(
    m0: ArrayLike,
    t1_s: ArrayLike,
    flip_deg: ArrayLike,
    tr_s: ArrayLike,
    b1: ArrayLike = 1.0,
) -> np.ndarray:
    """Steady-state spoiled gradient-echo (SPGR) signal.

    ``S = M0 sin(b1 alpha) (1 - E1) / (1 - E1 cos(b1 alpha))`` with ``E1 = exp(-TR/T1)``.

    Parameters
    ----------
    m0 : array_like
        Equilibrium magnetisation (arbitrary signal units).
    t1_s : array_like
        T1 in seconds (> 0).
    flip_deg : array_like
        Nominal flip angle(s) in degrees. A scalar broadcasts normally against the other
        arguments. A 1-D array of ``n_flips`` angles adds a **last** axis: the other
        arguments (spatial shape) are broadcast against ``flip_deg`` as ``x[..., None]``,
        so the result has shape ``broadcast(spatial) + (n_flips,)``.
    tr_s : array_like
        Repetition time in seconds (scalar, or spatial shape).
    b1 : array_like, optional
        B1+ as a fraction of nominal (``alpha_eff = b1 * alpha``); scalar or spatial shape.
        Default 1.0.

    Returns
    -------
    numpy.ndarray of float64
        Signal in the units of ``m0``.

    Raises
    ------
    ValueError
        If ``flip_deg`` has more than one dimension.
    """
    flip = np.asarray(flip_deg, dtype=np.float64)
    m0_a = np.asarray(m0, dtype=np.float64)
    t1_a = np.asarray(t1_s, dtype=np.float64)
    tr_a = np.asarray(tr_s, dtype=np.float64)
    b1_a = np.asarray(b1, dtype=np.float64)
    if flip.ndim > 1:
        raise ValueError(
            f"flip_deg must be a scalar or a 1-D sequence of flip angles, got shape {flip.shape}"
        )
    if flip.ndim == 1:
        m0_a, t1_a, tr_a, b1_a = (a[..., np.newaxis] for a in (m0_a, t1_a, tr_a, b1_a))
    alpha = np.deg2rad(flip) * b1_a
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e1 = np.exp(-tr_a / t1_a)
        return m0_a * np.sin(alpha) * (1.0 - e1) / (1.0 - e1 * np.cos(alpha))


def _check_flips(flip_deg: Sequence[float] | ArrayLike, n_last: int) -> np.ndarray:
    flips = np.asarray(flip_deg, dtype=np.float64)
    if flips.ndim != 1:
        raise ValueError(f"flip_deg must be a 1-D sequence of angles, got shape {flips.shape}")
    if flips.size < 2:
        raise ValueError(
            f"VFA T1 fitting needs at least 2 flip angles, got {flips.size} ({flips.tolist()})"
        )
    if not np.all(np.isfinite(flips)) or np.any(flips <= 0) or np.any(flips >= 180):
        raise ValueError(
            f"flip angles must be finite and in (0, 180) degrees, got {flips.tolist()}"
        )
    if np.unique(flips).size != flips.size:
        raise ValueError(
            f"VFA flip angles must be distinct, got {flips.tolist()}: repeated angles carry "
            "no T1 information (average the repeats before fitting)"
        )
    if n_last != flips.size:
        raise ValueError(
            f"signals has {n_last} values on its last axis but {flips.size} flip angles "
            f"were given ({flips.tolist()}); flip angles must be on the last axis"
        )
    return flips


def fit_vfa_linear(
    signals: ArrayLike,
    flip_deg: Sequence[float] | ArrayLike,
    tr_s: float,
    b1: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
) -> VFAFit:
    """Fit T1 and M0 voxel-wise with linear DESPOT1 (ordinary least squares).

    For each voxel, ``y = S / sin(alpha_eff)`` is regressed on ``x = S / tan(alpha_eff)``
    with ``alpha_eff = b1 * alpha_nominal``; the slope is ``E1 = exp(-TR/T1)``, so
    ``T1 = -TR / ln(E1)``, ``R1 = -ln(E1) / TR`` and ``M0 = intercept / (1 - E1)``.
    The closed-form least-squares slope is evaluated for all voxels at once (no per-voxel
    loop); voxels are processed in chunks of ``chunk_voxels`` to bound memory (the
    float64 working set is about ``chunk_voxels * n_flips * 8`` bytes times a small
    constant, on top of the float32 outputs).

    Parameters
    ----------
    signals : array_like, shape (..., n_flips)
        Magnitude SPGR signals (any real dtype), flip angles on the **last** axis, in the
        same order as ``flip_deg``. All flip-angle volumes must share ``tr_s``.
    flip_deg : sequence of float, length n_flips
        Nominal flip angles in degrees; at least 2, all distinct, each in (0, 180).
    tr_s : float
        Repetition time in seconds (> 0).
    b1 : array_like, optional
        B1+ map as a **fraction** of nominal, with the spatial shape ``signals.shape[:-1]``
        (a scalar is broadcast). ``None`` means 1 everywhere (no correction). Voxels with a
        non-finite or non-positive ``b1`` are invalid.
    mask : array_like of bool, optional
        Spatial mask; voxels outside it are not fitted and are invalid.
    chunk_voxels : int, optional
        Number of voxels fitted per vectorised chunk.

    Returns
    -------
    VFAFit
        ``t1_s`` (s), ``r1_per_s`` (1/s), ``m0`` (signal units) as float32 arrays of the
        spatial shape, and the boolean ``valid`` map. Invalid voxels hold **0** (not NaN)
        in ``t1_s``, ``r1_per_s`` and ``m0`` so that the maps can be resampled with linear
        interpolation; use ``valid`` (or ``t1_s > 0``) to mask them.

    Raises
    ------
    ValueError
        If fewer than 2 or repeated flip angles are given, angles are outside (0, 180)
        degrees, the last axis of ``signals`` does not match ``flip_deg``, ``tr_s`` is not
        a positive finite number, or ``b1`` / ``mask`` do not have the spatial shape.

    Notes
    -----
    A voxel is invalid when it is outside the mask, any of its signals or its ``b1`` is
    non-finite, ``b1 <= 0``, all its ``x`` values coincide (e.g. zero signal), or the
    fitted slope ``E1`` is not in the open interval (0, 1) (which would imply a negative
    or infinite T1). Linear DESPOT1 is exact on noise-free data; with noise it weights
    the angles unequally (no WLLS/NLLS here).
    """
    sig = np.asarray(signals)
    if sig.ndim < 1:
        raise ValueError("signals must have at least one axis (the flip-angle axis)")
    flips = _check_flips(flip_deg, sig.shape[-1])
    tr = float(tr_s)
    if not np.isfinite(tr) or tr <= 0:
        raise ValueError(f"tr_s must be a positive number of seconds, got {tr_s!r}")
    if int(chunk_voxels) < 1:
        raise ValueError(f"chunk_voxels must be >= 1, got {chunk_voxels!r}")
    chunk = int(chunk_voxels)

    spatial = sig.shape[:-1]
    n_vox = int(np.prod(spatial, dtype=np.int64))
    n_flips = flips.size
    sig2d = sig.reshape(n_vox, n_flips)  # a view when `signals` is C-contiguous

    if b1 is None:
        b1_flat = None
    else:
        b1_arr = np.asarray(b1, dtype=np.float64)
        if b1_arr.ndim != 0 and b1_arr.shape != spatial:
            raise ValueError(
                f"b1 map shape {b1_arr.shape} does not match the spatial shape {spatial} of signals"
            )
        b1_flat = np.broadcast_to(b1_arr, spatial).reshape(n_vox)

    candidates = np.ones(n_vox, dtype=bool)
    if mask is not None:
        mask_arr = np.asarray(mask)
        if mask_arr.shape != spatial:
            raise ValueError(
                f"mask shape {mask_arr.shape} does not match the spatial shape {spatial} of signals"
            )
        candidates &= mask_arr.reshape(n_vox).astype(bool, copy=False)
    if b1_flat is not None:
        candidates &= np.isfinite(b1_flat) & (b1_flat > 0)
    cand_idx = np.flatnonzero(candidates)
    del candidates

    t1_out = np.zeros(n_vox, dtype=np.float32)
    r1_out = np.zeros(n_vox, dtype=np.float32)
    m0_out = np.zeros(n_vox, dtype=np.float32)
    valid_out = np.zeros(n_vox, dtype=bool)

    alpha_nom = np.deg2rad(flips)
    sin_nom = np.sin(alpha_nom)
    tan_nom = np.tan(alpha_nom)

    for start in range(0, cand_idx.size, chunk):
        idx = cand_idx[start : start + chunk]
        s = sig2d[idx].astype(np.float64, copy=False)
        if b1_flat is None:
            y = s / sin_nom
            x = s / tan_nom
        else:
            alpha = b1_flat[idx, np.newaxis] * alpha_nom
            y = s / np.sin(alpha)
            x = s / np.tan(alpha)
            del alpha
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x_mean = x.mean(axis=1)
            y_mean = y.mean(axis=1)
            x -= x_mean[:, np.newaxis]
            y -= y_mean[:, np.newaxis]
            sxx = np.einsum("ij,ij->i", x, x)
            sxy = np.einsum("ij,ij->i", x, y)
            slope = sxy / sxx
            intercept = y_mean - slope * x_mean
            ok = (
                np.isfinite(s).all(axis=1)
                & (sxx > 0)
                & np.isfinite(slope)
                & (slope > 0)
                & (slope < 1)
            )
            neg_log_e1 = -np.log(np.where(ok, slope, 0.5))
            r1 = neg_log_e1 / tr
            t1 = tr / neg_log_e1
            m0 = intercept / (1.0 - slope)
            ok &= np.isfinite(t1) & np.isfinite(m0) & (t1 > 0)
            ok &= np.abs(t1) < np.finfo(np.float32).max
            ok &= np.abs(m0) < np.finfo(np.float32).max
        t1_out[idx] = np.where(ok, t1, 0.0)
        r1_out[idx] = np.where(ok, r1, 0.0)
        m0_out[idx] = np.where(ok, m0, 0.0)
        valid_out[idx] = ok

    return VFAFit(
        t1_s=t1_out.reshape(spatial),
        r1_per_s=r1_out.reshape(spatial),
        m0=m0_out.reshape(spatial),
        valid=valid_out.reshape(spatial),
    )
