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

#: Default number of voxels processed at once. With 4 flip angles one float64 temporary of
#: a chunk is 1 MB and the whole working set a few tens of MB (most for ``"nlls"``): small
#: enough for the caches, large enough to amortise the per-chunk Python overhead (measured
#: on the 1 mm benchmark: 2**15 is fastest for all methods, 2**17 is 1.5x slower).
DEFAULT_CHUNK_VOXELS = 1 << 15

#: Default iteration cap of the ``"wlls"`` and ``"nlls"`` fits.
DEFAULT_MAX_ITERATIONS = 50

#: Default convergence tolerance (relative change of R1 and, for NLLS, of M0).
DEFAULT_TOLERANCE = 1e-6

# Effective-angle trigonometry (see _AngleTable): b1 is quantised on a grid of step _B1_STEP
# (a power of two, so grid values are exact), sin/cos are tabulated on the grid and
# corrected by a Taylor expansion of the remainder (|remainder * alpha| < 2e-4 rad).
_B1_STEP = 2.0**-13
_MAX_TABLE = 1 << 16  # cap on the number of tabulated k (the table spans at most b1 0-4)
# b1 >= _DIRECT_K * _B1_STEP = 4 (4x the nominal angle, outside any head): evaluate sin/cos
# with libm, voxel by voxel; large angles keep libm accuracy and chunking does not matter
_DIRECT_K = 1 << 15
_TABLE_MARGIN = 512.0  # grid steps added on both sides when the table is (re)built

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
# WLLS weights: E1 of the previous iterate clipped to [0, _E1_WEIGHT_MAX].
_E1_WEIGHT_MAX = 1.0 - 1e-12
# Iterative fits: compact the working arrays once this fraction of them has stopped.
_COMPACT_FRACTION = 0.2
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32
# TR (s) for which T1 = -TR / ln(E1) and R1 = 1 / T1 are normal float32 numbers for every
# float64 E1 in (0, 1): -ln(E1) lies in [1.1e-16, 745].
_SAFE_TR_S = (1e-30, 1e21)
# Linear fits need x values that differ: centred / raw sum of squares of x above this.
_MIN_RELATIVE_SPREAD = 1e-12


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
    """``sum_k a[k, j] * b[k, j]`` for flip-major ``(n_flips, n_vox)`` arrays.

    The sum runs over the flip angles in order for every voxel, so a voxel's result does
    not depend on how many voxels share the array: einsum does exactly that for
    ``n_vox >= 2`` (verified by the chunking tests), but with a single column it switches
    to a contiguous SIMD dot product that rounds differently, hence the explicit loop.
    """
    if a.shape[-1] != 1:
        return np.einsum("kj,kj->j", a, b)
    out = a[0] * b[0]
    for k in range(1, a.shape[0]):
        out = out + a[k] * b[k]
    return out


def _rowsum(a: np.ndarray) -> np.ndarray:
    """``sum_k a[k, j]`` in flip order (see :func:`_rowsum_products`)."""
    if a.shape[-1] != 1:
        return a.sum(axis=0)
    out = a[0].copy()
    for k in range(1, a.shape[0]):
        out = out + a[k]
    return out


class _AngleTable:
    """``sin`` and ``cos`` of B1-scaled flip angles to float64 accuracy, fast.

    ``b1`` (finite, > 0) is split into ``k * h + delta`` with ``h = 2**-13``, integer ``k``
    and ``|delta| <= h / 2``. ``sin/cos(alpha * k * h)`` are tabulated (a few thousand
    ``k`` for a B1 map; the table is kept and extended across chunks) and combined with
    ``sin(eps) = eps - eps**3 / 6`` and ``cos(eps) = 1 - eps**2 / 2`` for
    ``eps = alpha * delta`` by the angle-addition formulas. ``|eps| < pi * 2**-14 < 2e-4``,
    so the truncation error is below ``eps**4 / 24 < 6e-17``: as accurate as
    ``np.sin``/``np.cos`` of the product (tested), about 3x cheaper than calling libm per
    voxel and angle, which numpy does not vectorise for float64 without AVX-512 (measured
    on the 1 mm benchmark: linear fit 14 M voxels/s with the table, 8 M with libm).
    Results do not depend on the chunking: a table entry only depends on its ``k``.
    """

    def __init__(self, alpha: np.ndarray):
        self.alpha = alpha
        self.alpha_sq_half = alpha * alpha / 2.0
        self.alpha_cube_sixth = alpha**3 / 6.0
        self.k_lo = 0.0
        self.k_hi = -1.0
        self.sin = self.cos = np.empty((alpha.size, 0))

    def _build(self, k_lo: float, k_hi: float) -> None:
        angle = np.multiply.outer(self.alpha, (k_lo + np.arange(int(k_hi - k_lo) + 1)) * _B1_STEP)
        self.k_lo, self.k_hi = k_lo, k_hi
        self.sin, self.cos = np.sin(angle), np.cos(angle)

    def sin_cos(self, b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sin, cos)`` of ``alpha[:, None] * b1[None, :]``, each ``(n_flips, b1.size)``."""
        if b1.size == 0:
            return np.empty((self.alpha.size, 0)), np.empty((self.alpha.size, 0))
        k = np.rint(b1 * (1.0 / _B1_STEP))
        # Absurd B1 (>= _DIRECT_K * _B1_STEP = 4) is evaluated with libm, decided per voxel.
        # The former per-chunk test (B1 span >= 8: whole chunk by libm) crashed for
        # B1 > 2.2e304 (k = inf, span NaN -> int(NaN)) and made a voxel's result depend on
        # the other voxels of its chunk, contrary to the chunk_voxels contract.
        big = k >= _DIRECT_K
        if big.any():
            sin_a = np.empty((self.alpha.size, b1.size))
            cos_a = np.empty((self.alpha.size, b1.size))
            small = ~big
            if small.any():
                sin_a[:, small], cos_a[:, small] = self._sin_cos_table(b1[small], k[small])
            angle = np.multiply.outer(self.alpha, b1[big])
            sin_a[:, big] = np.sin(angle)
            cos_a[:, big] = np.cos(angle)
            return sin_a, cos_a
        return self._sin_cos_table(b1, k)

    def _sin_cos_table(self, b1: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sin_cos` by the table, for ``k = rint(b1 / h)`` in ``[0, _DIRECT_K)``."""
        k_min, k_max = k.min(), k.max()
        if k_min < self.k_lo or k_max > self.k_hi:
            # grow with a margin so that the next chunks (similar B1) reuse the table
            lo, hi = k_min - _TABLE_MARGIN, k_max + _TABLE_MARGIN
            if self.k_hi >= self.k_lo:
                lo, hi = min(lo, self.k_lo), max(hi, self.k_hi)
            if hi - lo >= _MAX_TABLE:
                lo, hi = k_min, k_max
            self._build(max(lo, 0.0), hi)
        q = (k - self.k_lo).astype(np.intp)
        delta = b1 - k * _B1_STEP
        delta_sq = delta * delta
        # cos(eps) = 1 - eps^2/2 =: c_eps ; sin(eps) = eps - eps^3/6 =: s_eps (eps = alpha delta)
        c_eps = np.multiply.outer(self.alpha_sq_half, delta_sq)
        np.subtract(1.0, c_eps, out=c_eps)
        s_eps = np.multiply.outer(self.alpha, delta)
        s_eps -= np.multiply.outer(self.alpha_cube_sixth, delta_sq * delta)
        sin_q = np.take(self.sin, q, axis=1)
        cos_q = np.take(self.cos, q, axis=1)
        sin_a = sin_q * c_eps
        sin_a += cos_q * s_eps
        cos_a = cos_q
        cos_a *= c_eps
        sin_q *= s_eps
        cos_a -= sin_q
        return sin_a, cos_a


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel straight line ``y = slope * x + intercept`` (flip-major arrays).

    Returns ``(slope, intercept, informative)``; ``informative`` is False where the ``x``
    values (nearly) coincide: centred sum of squares ``<= 1e-12 sum(x^2)``, e.g. zero
    signals. Slope and intercept are non-finite whenever any ``x`` or ``y`` is (uncentred
    sums: ``n sum(x^2) - sum(x)^2`` is then ``inf - inf`` or NaN).
    """
    n = x.shape[0]
    sx = _rowsum(x)
    sy = _rowsum(y)
    sum_xx = _rowsum_products(x, x)
    sxx = sum_xx * n
    sxx -= sx * sx
    sxy = _rowsum_products(x, y)
    sxy *= n
    sxy -= sx * sy
    slope = sxy / sxx
    intercept = sy - slope * sx
    intercept /= n
    sum_xx *= n * _MIN_RELATIVE_SPREAD
    return slope, intercept, sxx > sum_xx


def _relative_r1_change(e1_new: np.ndarray, delta_e1: np.ndarray) -> np.ndarray:
    """``|delta R1| / R1`` for a change ``delta_e1`` of ``E1`` (first order; NaN if E1 invalid)."""
    return np.abs(delta_e1) / (e1_new * -np.log(e1_new))


def _keep(arr: np.ndarray, keep: np.ndarray, per_voxel: bool = True) -> np.ndarray:
    """Voxels ``keep`` (bool mask or index array) of a 1-D or flip-major array.

    Angle arrays shared by all voxels (``per_voxel=False``, shape ``(n_flips, 1)``) are
    returned as they are. ``np.compress``/``take`` are used because boolean fancy indexing
    along the last axis is several times slower.
    """
    if not per_voxel:
        return arr
    if keep.dtype == bool:
        return np.compress(keep, arr, axis=arr.ndim - 1)
    return np.take(arr, keep, axis=arr.ndim - 1)


def _keep_all(keep: np.ndarray, *arrays: np.ndarray, per_voxel: bool = True) -> list:
    """:func:`_keep` applied to each of ``arrays``."""
    return [_keep(arr, keep, per_voxel) for arr in arrays]


class _ActiveSet:
    """Bookkeeping of the voxels still iterating in a vectorised fixed-point/LM loop.

    ``pos`` maps the working arrays to the chunk; voxels that stop are recorded at once
    (so results do not depend on which other voxels share the chunk) and the working arrays
    are compacted when at least :data:`_COMPACT_FRACTION` of them are finished.
    """

    def __init__(self, n_vox: int):
        self.pos = np.arange(n_vox)
        self.live = np.ones(n_vox, dtype=bool)
        self.e1 = np.full(n_vox, np.nan)
        self.m0 = np.full(n_vox, np.nan)
        self.converged = np.zeros(n_vox, dtype=bool)

    def record(self, stop: np.ndarray, e1: np.ndarray, m0: np.ndarray, converged: np.ndarray):
        """Store the voxels of ``stop`` (still live) as final. Returns True to compact."""
        new = np.flatnonzero(stop & self.live)
        if new.size:
            where = self.pos[new]
            self.e1[where] = e1[new]
            self.m0[where] = m0[new]
            self.converged[where] = converged[new]
            self.live[new] = False
        n_live = np.count_nonzero(self.live)
        return n_live == 0 or n_live <= (1.0 - _COMPACT_FRACTION) * self.live.size

    def compact(self) -> np.ndarray:
        """Drop the finished voxels; returns the boolean ``keep`` for the working arrays."""
        keep = self.live
        self.pos = self.pos[keep]
        self.live = np.ones(self.pos.size, dtype=bool)
        return keep

    def finish(self, e1: np.ndarray, m0: np.ndarray):
        """Record the voxels still live (not converged) and return ``(e1, m0, converged)``."""
        idx = np.flatnonzero(self.live)
        self.e1[self.pos[idx]] = e1[idx]
        self.m0[self.pos[idx]] = m0[idx]
        return self.e1, self.m0, self.converged


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
    active = _ActiveSet(x.shape[1])
    usable = (e1_start > 0) & (e1_start < 1)
    e1 = np.where(usable, e1_start, np.exp(-tr / _WLLS_FALLBACK_T1_S))
    m0 = np.full(e1.shape, np.nan)
    for _ in range(max_iterations):
        # Chang et al. 2008: var(y - E1 x - b) = sigma^2 ((1 - E1 cos a) / sin a)^2, so
        # w = (sin a / (1 - E1 cos a))^2 with E1 from the previous iterate (clipped to [0, 1)).
        weight = 1.0 - np.minimum(np.maximum(e1, 0.0), _E1_WEIGHT_MAX) * cos_a
        np.divide(sin_a, weight, out=weight)
        weight *= weight
        w_sum = _rowsum(weight)
        x_mean = _rowsum_products(weight, x) / w_sum
        y_mean = _rowsum_products(weight, y) / w_sum
        dx = x - x_mean
        dy = y - y_mean
        weight *= dx
        e1_new = _rowsum_products(weight, dy) / _rowsum_products(weight, dx)
        converged = _relative_r1_change(e1_new, e1_new - e1) <= tolerance
        e1 = e1_new
        m0 = (y_mean - e1 * x_mean) / (1.0 - e1)
        if active.record(converged | ~np.isfinite(e1), e1, m0, converged):
            keep = active.compact()
            if not keep.any():
                break
            x, y, e1, m0 = _keep_all(keep, x, y, e1, m0)
            sin_a, cos_a = _keep_all(keep, sin_a, cos_a, per_voxel=per_voxel_angles)
    return active.finish(e1, m0)


def _grid_start(
    signals: np.ndarray, sin_a: np.ndarray, cos_a: np.ndarray, tr: float
) -> np.ndarray:
    """E1 of the best T1 in :data:`_FALLBACK_T1_S` (M0 profiled out) for each voxel."""
    best_cost = np.full(signals.shape[1], np.inf)
    best_e1 = np.full(signals.shape[1], np.exp(-tr / 1.0))
    for t1 in _FALLBACK_T1_S:
        e1 = np.exp(-tr / t1)
        shape = np.broadcast_to(sin_a * (1.0 - e1) / (1.0 - e1 * cos_a), signals.shape)
        fs = _rowsum_products(shape, signals)
        # residual sum of squares after the best M0 >= 0 is sum S^2 - max(f.S, 0)^2 / (f.f);
        # the first term is common to all candidates.
        cost = -np.maximum(fs, 0.0) ** 2 / _rowsum_products(shape, shape)
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
    active = _ActiveSet(signals.shape[1])
    e1 = e1_start.copy()
    bad_start = np.flatnonzero(~((e1 > 0) & (e1 < 1)))
    if bad_start.size:
        e1[bad_start] = _grid_start(
            np.take(signals, bad_start, axis=1),
            _keep(sin_a, bad_start, per_voxel_angles),
            _keep(cos_a, bad_start, per_voxel_angles),
            tr,
        )
    denom = np.broadcast_to(1.0 - e1 * cos_a, signals.shape)
    shape = np.broadcast_to(sin_a * (1.0 - e1) / denom, signals.shape)
    m0 = _rowsum_products(shape, signals) / _rowsum_products(shape, shape)  # best M0 for E1
    resid = signals - m0 * shape
    cost = _rowsum_products(resid, resid)
    # d model / d E1 = -M0 * sin a (1 - cos a) / (1 - E1 cos a)^2 =: -M0 * dshape
    sin_1mcos = sin_a * (1.0 - cos_a)
    lam = np.full(e1.shape, _LM_LAMBDA_START)

    # A profiled M0 <= 0 (e.g. all-zero or negative signals) is outside the model: stop
    # those voxels at once, unconverged (hence invalid).
    stop = ~((m0 > 0) & np.isfinite(cost))
    if stop.any() and active.record(stop, e1, m0, np.zeros_like(stop)):
        keep = active.compact()
        signals, e1, m0, lam, cost, denom, shape, resid = _keep_all(
            keep, signals, e1, m0, lam, cost, denom, shape, resid
        )
        sin_a, cos_a, sin_1mcos = _keep_all(
            keep, sin_a, cos_a, sin_1mcos, per_voxel=per_voxel_angles
        )

    for _ in range(max_iterations):
        if e1.size == 0:
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
        de1_gn = (b * g1 - a * g2) / (det * m0)
        converged = (np.abs(dm0_gn) <= tolerance * m0) & (
            _relative_r1_change(e1, de1_gn) <= tolerance
        )
        # Levenberg-Marquardt step (Marquardt's diagonal scaling); the 2x2 system is
        # positive definite for lam > 0 by Cauchy-Schwarz (b^2 <= a c).
        a *= 1.0 + lam
        c *= 1.0 + lam
        det = a * c - b * b
        dm0 = (c * g1 - b * g2) / det
        de1 = (b * g1 - a * g2) / (det * m0)
        # fraction-to-boundary rule: keep 0 < E1 < 1 and M0 > 0 strictly
        step = np.ones_like(de1)
        up = np.flatnonzero(e1 + de1 >= 1.0)
        step[up] = _TO_BOUNDARY * (1.0 - e1[up]) / de1[up]
        down = np.flatnonzero(e1 + de1 <= 0.0)
        step[down] = _TO_BOUNDARY * e1[down] / -de1[down]
        neg = np.flatnonzero(m0 + dm0 <= 0.0)
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
        lam = np.where(accept, np.maximum(lam / _LM_FACTOR, _LM_LAMBDA_MIN), lam * _LM_FACTOR)
        stop = converged | (lam > _LM_LAMBDA_MAX) | ~np.isfinite(cost)
        if active.record(stop, e1, m0, converged):
            keep = active.compact()
            signals, e1, m0, lam, cost, denom, shape, resid = _keep_all(
                keep, signals, e1, m0, lam, cost, denom, shape, resid
            )
            sin_a, cos_a, sin_1mcos = _keep_all(
                keep, sin_a, cos_a, sin_1mcos, per_voxel=per_voxel_angles
            )
    return active.finish(e1, m0)


def _fit_chunk(
    raw: np.ndarray,
    b1c: np.ndarray | None,
    table: _AngleTable,
    tr: float,
    method: str,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit one chunk of ``(n_vox, n_flips)`` signals.

    Returns ``(t1, r1, m0, ok)`` (float32, float32, float32, bool), with ``t1``, ``r1`` and
    ``m0`` set to 0 where ``ok`` is False.
    """
    signals = raw.T.astype(np.float64, order="C")  # flip-major: each angle a contiguous row
    per_voxel_angles = b1c is not None
    b_ok = None
    if b1c is None:
        sin_a = np.sin(table.alpha)[:, np.newaxis]
        cos_a = np.cos(table.alpha)[:, np.newaxis]
    else:
        b = b1c.astype(np.float64, copy=False)
        b_ok = np.isfinite(b) & (b > 0)
        if b_ok.all():
            b_ok = None
        else:
            b = np.where(b_ok, b, 1.0)
        sin_a, cos_a = table.sin_cos(b)
    y = signals / sin_a
    x = y * cos_a
    slope, intercept, informative = _ols(x, y)
    # finite slope and intercept <=> finite signals (and b1), x not constant
    ok = informative & np.isfinite(slope) & np.isfinite(intercept)
    if b_ok is not None:
        ok &= b_ok

    if method == "linear":
        e1 = slope
        m0 = intercept / (1.0 - slope)
    else:
        e1 = np.full(slope.shape, np.nan)
        m0 = np.full(slope.shape, np.nan)
        conv = np.zeros(slope.shape, dtype=bool)
        sel = np.flatnonzero(ok)
        if sel.size:
            if sel.size == ok.size:  # all fittable: no copies

                def pick(arr, per_voxel=True):
                    return arr

            else:

                def pick(arr, per_voxel=True):
                    return _keep(arr, sel, per_voxel)

            angles = (pick(sin_a, per_voxel_angles), pick(cos_a, per_voxel_angles))
            if method == "wlls":
                res = _wlls(pick(x), pick(y), *angles, pick(slope), tr, per_voxel_angles,
                            max_iterations, tolerance)
            else:
                res = _nlls(pick(signals), *angles, pick(slope), tr, per_voxel_angles,
                            max_iterations, tolerance)
            e1[sel], m0[sel], conv[sel] = res
        ok &= conv & (m0 > 0)

    ok &= (e1 > 0) & (e1 < 1)  # False for NaN
    neg_log_e1 = np.log(np.where(ok, e1, 0.5))
    neg_log_e1 *= -1.0  # > 0 (e1 < 1 means e1 <= 1 - 2**-53) and <= 745
    r1 = neg_log_e1 / tr
    t1 = tr / neg_log_e1
    # T1, R1 and M0 must be normal float32 numbers: a tiny M0 (signals ~1e-60) rounded to 0
    # in a "valid" voxel, and with an extreme TR (e.g. 1e-44 s) a T1 that fits can have an
    # R1 that overflows (R1 = inf and T1 rounded to 0 were flagged valid).
    abs_m0 = np.abs(m0)
    ok &= (abs_m0 >= _F32_TINY) & (abs_m0 < _F32_MAX)  # also False for NaN
    if _SAFE_TR_S[0] <= tr <= _SAFE_TR_S[1]:
        # T1 and R1 of every 0 < E1 < 1 (and of the E1 = 0.5 placeholder) are normal float32
        # numbers; float32 before the scatter into the output maps (a casting scatter is
        # 2x slower)
        t1 = np.multiply(t1, ok, dtype=np.float32)
        r1 = np.multiply(r1, ok, dtype=np.float32)
    else:
        ok &= (t1 >= _F32_TINY) & (t1 < _F32_MAX) & (r1 >= _F32_TINY) & (r1 < _F32_MAX)
        # the placeholder T1 or R1 is inf in float32 here: inf * 0 would leave NaN, not
        # the documented 0, in the maps of invalid voxels
        t1 = np.where(ok, t1, 0.0).astype(np.float32)
        r1 = np.where(ok, r1, 0.0).astype(np.float32)
    m0 = np.where(ok, m0, 0.0).astype(np.float32)
    return t1, r1, m0, ok


# --------------------------------------------------------------------------- public fits


def fit_vfa(
    signals: ArrayLike,
    flip_deg: Sequence[float] | ArrayLike,
    tr_s: float,
    b1: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    method: str = "linear",
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> VFAFit:
    """Fit T1 and M0 voxel-wise from variable-flip-angle SPGR signals.

    Three estimators share the inputs, validity rules and outputs:

    ``"linear"``
        DESPOT1 ordinary least squares: ``y = S / sin(alpha_eff)`` regressed on
        ``x = S / tan(alpha_eff)``; slope ``E1``, ``M0 = intercept / (1 - E1)``. Closed
        form, one pass. Same as :func:`fit_vfa_linear`.
    ``"wlls"``
        DESPOT1 weighted least squares, iteratively reweighted (Chang et al. 2008), starting
        from the linear fit.
    ``"nlls"``
        Nonlinear least squares of ``S(alpha) = M0 sin(b1 alpha) (1 - E1) /
        (1 - E1 cos(b1 alpha))`` in ``(M0, E1)`` by a bounded Levenberg-Marquardt iteration,
        starting from the linear fit.

    All voxels of a chunk are fitted at once with array operations (the 2x2 normal
    equations of WLLS/NLLS are solved in closed form per voxel); voxels are processed in
    chunks of ``chunk_voxels`` so the float64 working set stays bounded (about 10 to 25 x
    ``chunk_voxels * n_flips * 8`` bytes, i.e. 10-25 MB by default, on top of the float32
    outputs and, with a mask, an int64 index of the mask voxels).

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
        B1+ map as a **fraction** of nominal (``alpha_eff = b1 * alpha_nominal``), with the
        spatial shape ``signals.shape[:-1]`` (a scalar is broadcast). ``None`` means 1
        everywhere (no correction). Voxels with a non-finite or non-positive ``b1`` are
        invalid.
    mask : array_like of bool, optional
        Spatial mask; voxels outside it are not fitted and are invalid.
    method : {"linear", "wlls", "nlls"}, optional
        Estimator (see above and :data:`VFA_METHODS`). Default ``"linear"``.
    chunk_voxels : int, optional
        Number of voxels fitted per vectorised chunk (results do not depend on it).
    max_iterations : int, optional
        Iteration cap of ``"wlls"`` and ``"nlls"`` (ignored by ``"linear"``); voxels not
        converged after it are invalid.
    tolerance : float, optional
        Convergence tolerance of ``"wlls"`` and ``"nlls"`` (dimensionless, relative change
        of R1 and, for NLLS, of M0; see Notes).

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
        If ``method`` is not one of :data:`VFA_METHODS`, fewer than 2 or repeated flip
        angles are given, angles are outside (0, 180) degrees, the last axis of ``signals``
        does not match ``flip_deg``, ``tr_s`` is not a positive finite number, ``b1`` /
        ``mask`` do not have the spatial shape, ``chunk_voxels`` or ``max_iterations`` is
        < 1, or ``tolerance`` is not a positive finite number.

    Notes
    -----
    **Validity (all methods).** A voxel is invalid when it is outside the mask, any of its
    signals or its ``b1`` is non-finite, ``b1 <= 0``, its ``x`` values (nearly) coincide
    (centred sum of squares below 1e-12 of the raw one, e.g. zero signal), or the fitted
    ``E1`` is not in the open interval (0, 1) (a negative or infinite T1), or T1, R1 or
    ``|M0|`` is not a normal float32 number (1.2e-38 to 3.4e38: only extreme ``tr_s`` or
    signal magnitudes get there). ``"wlls"`` and ``"nlls"`` additionally require
    convergence within ``max_iterations`` and ``M0 > 0``; ``"linear"`` keeps the rule of
    :func:`fit_vfa_linear` and does not test the sign of M0.

    **Noise model.** ``"wlls"`` and ``"nlls"`` assume independent Gaussian noise of equal
    variance on the magnitude signals of all flip angles (a good approximation of Rician
    noise above SNR ~ 5). NLLS is then the maximum-likelihood estimator. The linear form
    distorts this noise. Its residual ``y - E1 x - b = S (1 - E1 cos a) / sin a - b`` is
    linear in ``S``. Given ``E1``, its variance is therefore
    ``sigma^2 ((1 - E1 cos a) / sin a)^2``. The WLLS weights are the inverse of it,
    ``w(a) = (sin a / (1 - E1 cos a))^2``. These are the weights of Chang, Koay, Basser &
    Pierpaoli, "Linear least-squares method for unbiased estimation of T1 from SPGR
    signals", MRM 60:496-501 (2008), and of QUIT's ``qi despot1 --algo=w``. With them,
    ``sqrt(w) (y - E1 x - b) = S - M0 f(a, E1)`` is the signal-domain residual. ``E1`` in
    ``w`` is taken from the previous iterate (the linear fit first, or ``E1(T1 = 1 s)`` where
    that slope is not in (0, 1); clipped to [0, 1) inside the weights). Each iteration is
    a closed-form weighted line fit.

    **Convergence.** WLLS stops for a voxel when an iteration changes R1 by at most
    ``tolerance`` (relative, ``|dE1| / (E1 |ln E1|)``). NLLS works in ``(M0, E1)``. It
    starts from the linear ``E1`` with the least-squares ``M0`` for that ``E1``. Where the
    linear slope is not in (0, 1), it instead starts from the best ``T1`` of a coarse grid
    (0.05-5 s). Each iteration solves the damped 2x2 normal equations
    ``(J'J + lam diag(J'J)) d = J'r`` in closed form. It limits the step so that ``E1``
    and ``M0`` go at most halfway to the bounds ``0 < E1 < 1``, ``M0 > 0``. It accepts the
    step only if the residual sum of squares decreases: ``lam`` / 10 on success, x 10
    otherwise, starting at 1e-3. A voxel has converged when the undamped Gauss-Newton step
    changes both R1 and M0 by at most ``tolerance`` (relative). An NLLS voxel also stops,
    unconverged and hence invalid, when ``lam`` exceeds 1e12 or the cost is non-finite. A
    voxel whose least-squares optimum lies outside the bounds approaches the bound and
    never meets the test, so it ends invalid.

    **Accuracy.** All three are exact on noise-free data (to float32 output rounding, with
    the B1 map; the sin/cos of the B1-scaled angles are computed to float64 accuracy by a
    table plus Taylor correction). With noise NLLS is the least biased and, with WLLS, the
    most precise: for the reference protocol (2/5/10/15 deg, TR 15 ms) at SNR 50 the SD of
    T1 is 0.67x (T1 0.4 s), 0.79x (0.83 s) and 0.87x (1.5 s) that of the linear fit and
    the mean bias falls from +3.0 / +0.8 / +0.3 % (linear) to +0.3 / +0.1 / +0.1 %
    (NLLS; WLLS +1.7 / +0.7 / +0.4 %), see ``tests/unit/test_vfa.py``. Typical cost on one core:
    NLLS and WLLS converge in 4-6 iterations and run about 6x and 3x slower than the linear
    fit (``benchmarks/vfa_fit.py``).
    """
    if not isinstance(method, str) or method not in VFA_METHODS:
        raise ValueError(
            f"unknown VFA fit method {method!r}; allowed methods: {', '.join(VFA_METHODS)}"
        )
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
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations!r}")
    max_it = int(max_iterations)
    tol = float(tolerance)
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tolerance must be a positive number, got {tolerance!r}")

    spatial = sig.shape[:-1]
    n_vox = int(np.prod(spatial, dtype=np.int64))
    n_flips = flips.size
    sig2d = sig.reshape(n_vox, n_flips)  # a view when `signals` is C-contiguous

    b1_flat = None
    if b1 is not None:
        b1_arr = np.asarray(b1)
        if b1_arr.dtype.kind not in "fiu":
            b1_arr = b1_arr.astype(np.float64)
        if b1_arr.ndim != 0 and b1_arr.shape != spatial:
            raise ValueError(
                f"b1 map shape {b1_arr.shape} does not match the spatial shape {spatial} of signals"
            )
        b1_flat = np.broadcast_to(b1_arr, spatial).reshape(n_vox)

    idx = None  # all voxels, in contiguous slices
    if mask is not None:
        mask_arr = np.asarray(mask)
        if mask_arr.shape != spatial:
            raise ValueError(
                f"mask shape {mask_arr.shape} does not match the spatial shape {spatial} of signals"
            )
        idx = np.flatnonzero(mask_arr.reshape(n_vox))

    t1_out = np.zeros(n_vox, dtype=np.float32)
    r1_out = np.zeros(n_vox, dtype=np.float32)
    m0_out = np.zeros(n_vox, dtype=np.float32)
    valid_out = np.zeros(n_vox, dtype=bool)

    table = _AngleTable(np.deg2rad(flips))
    n_todo = n_vox if idx is None else idx.size
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for start in range(0, n_todo, chunk):
            if idx is None:
                target = slice(start, min(start + chunk, n_vox))
                raw = sig2d[target]
                b1c = None if b1_flat is None else b1_flat[target]
            else:
                target = idx[start : start + chunk]
                raw = np.take(sig2d, target, axis=0, mode="clip")  # indices are in range
                b1c = None if b1_flat is None else np.take(b1_flat, target, mode="clip")
            t1, r1, m0, ok = _fit_chunk(raw, b1c, table, tr, method, max_it, tol)
            t1_out[target] = t1
            r1_out[target] = r1
            m0_out[target] = m0
            valid_out[target] = ok

    return VFAFit(
        t1_s=t1_out.reshape(spatial),
        r1_per_s=r1_out.reshape(spatial),
        m0=m0_out.reshape(spatial),
        valid=valid_out.reshape(spatial),
    )


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
    Equivalent to ``fit_vfa(..., method="linear")``; see :func:`fit_vfa` for the parameters,
    the chunking and the weighted / nonlinear alternatives.

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
        spatial shape, and the boolean ``valid`` map. Invalid voxels hold **0** (not NaN).

    Raises
    ------
    ValueError
        If fewer than 2 or repeated flip angles are given, angles are outside (0, 180)
        degrees, the last axis of ``signals`` does not match ``flip_deg``, ``tr_s`` is not
        a positive finite number, or ``b1`` / ``mask`` do not have the spatial shape.

    Notes
    -----
    A voxel is invalid when it is outside the mask, any of its signals or its ``b1`` is
    non-finite, ``b1 <= 0``, its ``x`` values (nearly) coincide (e.g. zero signal), or the
    fitted slope ``E1`` is not in the open interval (0, 1) (which would imply a negative
    or infinite T1), or T1, R1 or ``|M0|`` is not a normal float32 number. Linear
    DESPOT1 is exact on noise-free data; with noise it weights the angles unequally and T1
    is biased (use ``fit_vfa(method="nlls")`` or ``"wlls"``).
    """
    return fit_vfa(signals, flip_deg, tr_s, b1, mask, method="linear", chunk_voxels=chunk_voxels)
