"""Variable-flip-angle (VFA) T1 mapping: SPGR signal model and DESPOT1 fits.

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

:func:`fit_vfa` offers three estimators (:data:`VFA_METHODS`), as QUIT's ``qi despot1`` does:
ordinary linear least squares on the linear form (``"linear"``, the default and
:func:`fit_vfa_linear`), iteratively reweighted linear least squares with the weights of
Chang et al. 2008 (``"wlls"``) and nonlinear least squares on the signal equation
(``"nlls"``). All are vectorised over voxels (no per-voxel Python loop) and chunked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["VFA_METHODS", "VFAFit", "fit_vfa", "fit_vfa_linear", "spgr_signal"]

#: Fit methods accepted by :func:`fit_vfa`.
VFA_METHODS = ("linear", "wlls", "nlls")

#: Default number of voxels processed at once. With 4 flip angles the float64 temporaries
#: of one chunk take a few MB (a few tens of MB for ``"nlls"``), small enough to stay in
#: cache-friendly sizes, large enough to amortise the per-chunk Python overhead.
DEFAULT_CHUNK_VOXELS = 1 << 16

#: Default iteration cap of the ``"wlls"`` and ``"nlls"`` fits.
DEFAULT_MAX_ITERATIONS = 50

#: Default convergence tolerance (relative change of R1 and, for NLLS, of M0).
DEFAULT_TOLERANCE = 1e-6

# Effective-angle trigonometry: b1 is quantised on a grid of step _B1_STEP (a power of two,
# so grid values are exact), sin/cos are tabulated on the grid and corrected by a Taylor
# expansion of the remainder (|remainder * alpha| <= pi * 2**-14 < 2e-4 rad), which is as
# accurate as np.sin/np.cos but ~10x faster than evaluating libm per voxel and angle.
_B1_STEP = 2.0**-13
_MAX_TABLE = 1 << 16  # b1 span above _MAX_TABLE * _B1_STEP = 8: evaluate sin/cos directly

# NLLS: T1 values (s) tried as a start where the linear fit is not usable.
_FALLBACK_T1_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
# WLLS: T1 (s) whose E1 weights the first reweighting where the linear fit is not usable.
_WLLS_FALLBACK_T1_S = 1.0
# Levenberg-Marquardt damping: start, bounds and factor; fraction-to-boundary step rule.
_LM_LAMBDA_START = 1e-3
_LM_LAMBDA_MIN = 1e-12
_LM_LAMBDA_MAX = 1e12
_LM_FACTOR = 10.0
_TO_BOUNDARY = 0.5
_F32_MAX = float(np.finfo(np.float32).max)


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
        True where the fit is usable (inside the mask, finite inputs, ``b1 > 0``,
        ``0 < E1 < 1`` and, for the iterative methods, converged).
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


# --------------------------------------------------------------------------- helpers


def _rowsum_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_k a[k, j] * b[k, j]`` for flip-major ``(n_flips, n_vox)`` arrays."""
    return np.einsum("kj,kj->j", a, b)


def _effective_sin_cos(alpha: np.ndarray, b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sin`` and ``cos`` of ``alpha[:, None] * b1[None, :]`` to float64 accuracy.

    ``b1`` (finite, > 0) is split into ``q * h + delta`` with ``h = 2**-13`` and
    ``|delta| <= h / 2``; ``sin/cos(alpha * q * h)`` are tabulated once per distinct ``q``
    (a few thousand values for a B1 map) and combined with ``sin(eps) = eps - eps**3 / 6``,
    ``cos(eps) = 1 - eps**2 / 2`` for ``eps = alpha * delta`` (truncation error below
    ``eps**4 / 24 < 6e-17``), by the angle-addition formulas.
    """
    inv_step = 1.0 / _B1_STEP
    grid_index = np.rint(b1 * inv_step)
    k_lo = grid_index.min()
    n_table = int(grid_index.max() - k_lo) + 1
    if n_table > _MAX_TABLE:  # absurd B1 span: plain libm evaluation
        angle = np.multiply.outer(alpha, b1)
        return np.sin(angle), np.cos(angle)
    table_angle = np.multiply.outer(alpha, (k_lo + np.arange(n_table)) * _B1_STEP)
    table_sin = np.sin(table_angle)
    table_cos = np.cos(table_angle)
    q = (grid_index - k_lo).astype(np.intp)
    eps = np.multiply.outer(alpha, b1 - grid_index * _B1_STEP)
    eps2 = eps * eps
    sin_eps = eps2 * (-1.0 / 6.0)
    sin_eps += 1.0
    sin_eps *= eps
    cos_eps = eps2
    cos_eps *= -0.5
    cos_eps += 1.0
    sin_q = np.take(table_sin, q, axis=1)
    cos_q = np.take(table_cos, q, axis=1)
    sin_a = sin_q * cos_eps
    sin_a += cos_q * sin_eps
    cos_a = cos_q
    cos_a *= cos_eps
    sin_q *= sin_eps
    cos_a -= sin_q
    return sin_a, cos_a


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel straight line ``y = slope * x + intercept`` (flip-major arrays).

    Returns ``(slope, intercept, sxx)`` with ``sxx`` the centred sum of squares of ``x``.
    """
    x_mean = x.mean(axis=0)
    y_mean = y.mean(axis=0)
    dx = x - x_mean
    dy = y - y_mean
    sxx = _rowsum_products(dx, dx)
    sxy = _rowsum_products(dx, dy)
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    return slope, intercept, sxx


def _relative_r1_change(e1_new: np.ndarray, delta_e1: np.ndarray) -> np.ndarray:
    """``|delta R1| / R1`` for a change ``delta_e1`` of ``E1`` (first order; NaN if E1 invalid)."""
    return np.abs(delta_e1) / (e1_new * -np.log(e1_new))


def _keep(arr: np.ndarray, keep: np.ndarray, per_voxel: bool = True) -> np.ndarray:
    """Columns (voxels) ``keep`` of a 1-D or flip-major array; shared ``(n, 1)`` arrays as-is."""
    if not per_voxel:
        return arr
    return arr[keep] if arr.ndim == 1 else arr[:, keep]


def _wlls(
    x: np.ndarray,
    y: np.ndarray,
    sin_a: np.ndarray,
    cos_a: np.ndarray,
    e1_start: np.ndarray,
    tr: float,
    per_voxel_angles: bool,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iteratively reweighted DESPOT1 line fit; returns ``(e1, m0, converged)``."""
    n_vox = x.shape[1]
    e1_out = np.full(n_vox, np.nan)
    m0_out = np.full(n_vox, np.nan)
    conv_out = np.zeros(n_vox, dtype=bool)
    usable = (e1_start > 0) & (e1_start < 1)
    e1 = np.where(usable, e1_start, np.exp(-tr / _WLLS_FALLBACK_T1_S))
    pos = np.arange(n_vox)
    e1_new = intercept = e1
    for _ in range(max_iterations):
        # Chang et al. 2008: var(y - E1 x) = sigma^2 ((1 - E1 cos a) / sin a)^2
        weight = sin_a / (1.0 - np.clip(e1, 0.0, 1.0 - 1e-12) * cos_a)
        weight *= weight
        w_sum = weight.sum(axis=0)
        x_mean = _rowsum_products(weight, x) / w_sum
        y_mean = _rowsum_products(weight, y) / w_sum
        dx = x - x_mean
        weight *= dx
        sxx = _rowsum_products(weight, dx)
        dx -= x  # dx = -x_mean; reuse the buffer for dy = y - y_mean
        dx += y
        sxy = _rowsum_products(weight, dx)
        e1_new = sxy / sxx
        intercept = y_mean - e1_new * x_mean
        converged = _relative_r1_change(e1_new, e1_new - e1) <= tolerance
        done = converged | ~np.isfinite(e1_new)
        e1 = e1_new
        if done.any():
            where = pos[done]
            e1_out[where] = e1_new[done]
            m0_out[where] = intercept[done] / (1.0 - e1_new[done])
            conv_out[where] = converged[done]
            keep = ~done
            pos = pos[keep]
            if pos.size == 0:
                break
            x, y, e1 = x[:, keep], y[:, keep], e1[keep]
            sin_a = _keep(sin_a, keep, per_voxel_angles)
            cos_a = _keep(cos_a, keep, per_voxel_angles)
    else:
        e1_out[pos] = e1_new[: pos.size] if e1_new.size == pos.size else e1
        m0_out[pos] = (intercept / (1.0 - e1_new))[: pos.size] if e1_new.size == pos.size else np.nan
    return e1_out, m0_out, conv_out


def _grid_start(
    signals: np.ndarray, sin_a: np.ndarray, cos_a: np.ndarray, tr: float
) -> np.ndarray:
    """E1 of the best T1 in :data:`_FALLBACK_T1_S` (M0 profiled out) for each voxel."""
    best_cost = np.full(signals.shape[1], np.inf)
    best_e1 = np.full(signals.shape[1], np.exp(-tr / 1.0))
    for t1 in _FALLBACK_T1_S:
        e1 = np.exp(-tr / t1)
        shape = sin_a * (1.0 - e1) / (1.0 - e1 * cos_a)
        shape = np.broadcast_to(shape, signals.shape)
        fs = _rowsum_products(shape, signals)
        # residual sum of squares after the best M0: sum S^2 - (f.S)^2 / (f.f); the first
        # term is common to all candidates.
        cost = -fs * np.abs(fs) / _rowsum_products(shape, shape)
        better = cost < best_cost
        best_cost = np.where(better, cost, best_cost)
        best_e1 = np.where(better, e1, best_e1)
    return best_e1


def _nlls(
    signals: np.ndarray,
    sin_a: np.ndarray,
    cos_a: np.ndarray,
    e1_start: np.ndarray,
    tr: float,
    per_voxel_angles: bool,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt fit of ``(M0, E1)`` on the SPGR equation; ``(e1, m0, converged)``."""
    n_vox = signals.shape[1]
    e1_out = np.full(n_vox, np.nan)
    m0_out = np.full(n_vox, np.nan)
    conv_out = np.zeros(n_vox, dtype=bool)

    e1 = e1_start.copy()
    bad_start = ~((e1 > 0) & (e1 < 1))
    if bad_start.any():
        e1[bad_start] = _grid_start(
            signals[:, bad_start],
            _keep(sin_a, bad_start, per_voxel_angles),
            _keep(cos_a, bad_start, per_voxel_angles),
            tr,
        )
    denom = 1.0 - e1 * cos_a
    shape = sin_a * (1.0 - e1) / denom
    shape = np.broadcast_to(shape, signals.shape)
    m0 = _rowsum_products(shape, signals) / _rowsum_products(shape, shape)  # best M0 for E1
    resid = signals - m0 * shape
    cost = _rowsum_products(resid, resid)
    denom = np.broadcast_to(denom, signals.shape)
    # d model / d E1 = -M0 * sin a (1 - cos a) / (1 - E1 cos a)^2 = -M0 * dshape
    sin_1mcos = sin_a * (1.0 - cos_a)
    lam = np.full(n_vox, _LM_LAMBDA_START)
    pos = np.arange(n_vox)

    # voxels whose profiled M0 is not positive (e.g. all-zero or negative signals) are
    # outside the model (M0 > 0): invalid from the start.
    alive = (m0 > 0) & np.isfinite(m0) & np.isfinite(cost)
    if not alive.all():
        where = pos[~alive]
        e1_out[where] = e1[~alive]
        m0_out[where] = m0[~alive]
        pos = pos[alive]
        signals, e1, m0, lam, cost = signals[:, alive], e1[alive], m0[alive], lam[alive], cost[alive]
        denom, shape, resid = denom[:, alive], shape[:, alive], resid[:, alive]
        sin_a = _keep(sin_a, alive, per_voxel_angles)
        cos_a = _keep(cos_a, alive, per_voxel_angles)
        sin_1mcos = _keep(sin_1mcos, alive, per_voxel_angles)

    for _ in range(max_iterations):
        if pos.size == 0:
            break
        dshape = sin_1mcos / (denom * denom)
        # In the coordinates (dM0, q = -M0 dE1) the Jacobian columns are (shape, dshape).
        a = _rowsum_products(shape, shape)
        b = _rowsum_products(shape, dshape)
        c = _rowsum_products(dshape, dshape)
        g1 = _rowsum_products(shape, resid)
        g2 = _rowsum_products(dshape, resid)
        # Gauss-Newton step: convergence test (independent of the damping)
        det = a * c - b * b
        dm0_gn = (c * g1 - b * g2) / det
        de1_gn = -((a * g2 - b * g1) / det) / m0
        converged = (np.abs(dm0_gn) <= tolerance * m0) & (
            _relative_r1_change(e1, de1_gn) <= tolerance
        )
        # Levenberg-Marquardt step (Marquardt's diagonal scaling); the 2x2 system is
        # positive definite for lam > 0 by Cauchy-Schwarz (b^2 <= a c).
        a_l = a * (1.0 + lam)
        c_l = c * (1.0 + lam)
        det_l = a_l * c_l - b * b
        dm0 = (c_l * g1 - b * g2) / det_l
        de1 = -((a_l * g2 - b * g1) / det_l) / m0
        # fraction-to-boundary rule: keep 0 < E1 < 1 and M0 > 0 strictly
        step = np.ones_like(de1)
        up = e1 + de1 >= 1.0
        step[up] = _TO_BOUNDARY * (1.0 - e1[up]) / de1[up]
        down = e1 + de1 <= 0.0
        step[down] = _TO_BOUNDARY * e1[down] / -de1[down]
        neg = m0 + dm0 <= 0.0
        step[neg] = np.minimum(step[neg], _TO_BOUNDARY * m0[neg] / -dm0[neg])
        e1_try = e1 + step * de1
        m0_try = m0 + step * dm0
        denom_try = 1.0 - e1_try * cos_a
        shape_try = sin_a * (1.0 - e1_try)
        shape_try /= denom_try
        resid_try = signals - m0_try * shape_try
        cost_try = _rowsum_products(resid_try, resid_try)
        accept = cost_try < cost
        e1 = np.where(accept, e1_try, e1)
        m0 = np.where(accept, m0_try, m0)
        cost = np.where(accept, cost_try, cost)
        denom = np.where(accept, denom_try, denom)
        shape = np.where(accept, shape_try, shape)
        resid = np.where(accept, resid_try, resid)
        lam = np.where(
            accept,
            np.maximum(lam / _LM_FACTOR, _LM_LAMBDA_MIN),
            lam * _LM_FACTOR,
        )
        done = converged | (lam > _LM_LAMBDA_MAX) | ~np.isfinite(cost)
        if done.any():
            where = pos[done]
            e1_out[where] = e1[done]
            m0_out[where] = m0[done]
            conv_out[where] = converged[done]
            keep = ~done
            pos = pos[keep]
            signals, e1, m0, lam, cost = signals[:, keep], e1[keep], m0[keep], lam[keep], cost[keep]
            denom, shape, resid = denom[:, keep], shape[:, keep], resid[:, keep]
            sin_a = _keep(sin_a, keep, per_voxel_angles)
            cos_a = _keep(cos_a, keep, per_voxel_angles)
            sin_1mcos = _keep(sin_1mcos, keep, per_voxel_angles)
    e1_out[pos] = e1
    m0_out[pos] = m0
    return e1_out, m0_out, conv_out


def _fit_chunk(
    raw: np.ndarray,
    b1c: np.ndarray | None,
    alpha: np.ndarray,
    tr: float,
    method: str,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit one chunk of ``(n_vox, n_flips)`` signals; returns ``(t1, r1, m0, ok)``."""
    signals = raw.T.astype(np.float64, order="C")  # flip-major: each angle a contiguous row
    good = np.isfinite(signals.sum(axis=0))
    per_voxel_angles = b1c is not None
    if b1c is None:
        sin_a = np.sin(alpha)[:, np.newaxis]
        cos_a = np.cos(alpha)[:, np.newaxis]
    else:
        b = b1c.astype(np.float64, copy=False)
        b_ok = np.isfinite(b) & (b > 0)
        if not b_ok.all():
            good &= b_ok
            b = np.where(b_ok, b, 1.0)
        if b.size:
            sin_a, cos_a = _effective_sin_cos(alpha, b)
        else:
            sin_a = cos_a = np.empty((alpha.size, 0))
    y = signals / sin_a
    x = y * cos_a
    slope, intercept, sxx = _ols(x, y)
    ok = good & (sxx > 0)

    if method == "linear":
        e1 = slope
        m0 = intercept / (1.0 - slope)
    else:
        e1 = np.full(slope.shape, np.nan)
        m0 = np.full(slope.shape, np.nan)
        conv = np.zeros(slope.shape, dtype=bool)
        sel = np.flatnonzero(ok)
        if sel.size:
            full = sel.size == slope.size
            sub = (lambda a: a) if full else (lambda a: _keep(a, sel, per_voxel_angles))
            start = slope if full else slope[sel]
            if method == "wlls":
                res = _wlls(
                    sub(x) if per_voxel_angles or not full else x,
                    x if full else x[:, sel],
                    sub(sin_a),
                    sub(cos_a),
                    start,
                    tr,
                    per_voxel_angles,
                    max_iterations,
                    tolerance,
                )
            else:
                res = _nlls(
                    signals if full else signals[:, sel],
                    sub(sin_a),
                    sub(cos_a),
                    start,
                    tr,
                    per_voxel_angles,
                    max_iterations,
                    tolerance,
                )
            e1[sel], m0[sel], conv[sel] = res
        ok &= conv & (m0 > 0)

    ok &= np.isfinite(e1) & (e1 > 0) & (e1 < 1)
    neg_log_e1 = -np.log(np.where(ok, e1, 0.5))
    r1 = neg_log_e1 / tr
    t1 = tr / neg_log_e1
    ok &= np.isfinite(t1) & np.isfinite(m0) & (t1 > 0)
    ok &= (np.abs(t1) < _F32_MAX) & (np.abs(m0) < _F32_MAX)
    return t1, r1, m0, ok
