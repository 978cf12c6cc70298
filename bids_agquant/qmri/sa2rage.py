"""SA2RAGE B1+ mapping (Eggenschwiler et al., Magn Reson Med 2012;67:1609-1619).

SA2RAGE is the MP2RAGE scheme with the inversion replaced by a **saturation** pulse. Every
``RepetitionTimePreparation`` a saturation pulse of nominal flip ``theta_sat`` (90 degrees)
leaves ``Mz -> cos(b1 theta_sat) Mz`` (it is not adiabatic, so its flip scales with B1+, as in
J.P. Marques's reference implementation, which calls the MPRAGE model with an inversion
efficiency ``-cos(B1 pi / 2)``); it is followed by two low-flip FLASH trains (flips ``b1
alpha_k``, echo spacing ``tau = RepetitionTimeExcitation``) whose k-space centres are at the
delays ``TI1`` (short) and ``TI2`` (BIDS ``InversionTime``) after it. The timing convention and
the closed-form steady state are those of :func:`bids_agquant.qmri.mp2rage.mp2rage_signals`;
``NumberShots`` may be non-integer here (``BaseResolution * [PF - 0.5, 0.5] / iPAT +
RefLines / 2 * (1 - 1 / iPAT)``).

The measured quantity is the ratio ``S1 / S2`` of the two k-space-centre signals. It depends
strongly on B1+ (through the saturation, which leaves less and then negative magnetisation
for the first readout as B1+ grows) and weakly on T1 (recovery during the short delay). B1+ is
found by inverting the model ratio on its monotonic branch, at an assumed T1
(:data:`NOMINAL_T1_S`, as in the paper and Marques & Gruetter, PLoS ONE 2013;8:e69294) or at
each voxel's T1 when a T1 map is available. :func:`sa2rage_t1_sensitivity` states the error
of the nominal-T1 assumption for a protocol.

Units: times and T1 in seconds, flip angles in degrees, B1+ as a fraction of nominal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq

from .mp2rage.signals import _two_train_signals

__all__ = [
    "DEFAULT_B1_RANGE",
    "LUT_B1_STEP",
    "LUT_T1_RANGE_S",
    "LUT_T1_SAMPLES",
    "NOMINAL_T1_S",
    "SA2RAGEProtocol",
    "SA2RAGEProtocolError",
    "b1_from_sa2rage",
    "sa2rage_ratio",
    "sa2rage_signals",
    "sa2rage_t1_sensitivity",
    "sign_change_b1",
]

#: T1 assumed for the look-up when no T1 map is given, s (Eggenschwiler 2012; Marques 2013).
NOMINAL_T1_S = 1.5

#: Step of the B1+ grid of the look-up tables (fraction of nominal). Half the 0.005 of
#: Marques's implementation: the ratio is smooth in B1, so linear interpolation between
#: samples adds an error far below 0.1 %.
LUT_B1_STEP = 0.0025

#: T1 range (s) and number of log-spaced rows of the two-dimensional table used with a T1
#: map; a voxel's T1 is clipped to the range (the ratio varies slowly with T1, so a T1 beyond
#: 5 s, e.g. CSF, is served well by the last row).
LUT_T1_RANGE_S = (0.2, 5.0)
LUT_T1_SAMPLES = 64

#: Default accepted B1+ range (fraction of nominal), also the extent of the look-up tables.
DEFAULT_B1_RANGE = (0.05, 2.5)

#: Slack (s) of the timing-feasibility checks, for rounding in sidecar values.
_TIMING_TOLERANCE_S = 1e-9


class SA2RAGEProtocolError(ValueError):
    """An SA2RAGE protocol value is invalid or its timing infeasible.

    The message names the BIDS key (``RepetitionTimePreparation``, ``RepetitionTimeExcitation``,
    ``InversionTime``, ``FlipAngle``, ``NumberShots``) and the offending values.
    """


def _positive(name: str, value: Any, unit: str) -> float:
    if isinstance(value, bool | np.bool_):
        raise SA2RAGEProtocolError(f"{name} must be a number ({unit}), got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SA2RAGEProtocolError(f"{name} must be a number ({unit}), got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise SA2RAGEProtocolError(f"{name} must be positive and finite ({unit}), got {out}")
    return out


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    if isinstance(value, str | bytes) or np.ndim(value) != 1 or len(value) != 2:
        raise SA2RAGEProtocolError(f"{name} must hold one value per readout (two), got {value!r}")
    return value[0], value[1]


def _flip(name: str, value: Any) -> float:
    out = _positive(name, value, "degrees")
    if out >= 180.0:
        raise SA2RAGEProtocolError(f"{name} must be in (0, 180) degrees, got {out}")
    return out


@dataclass(frozen=True)
class SA2RAGEProtocol:
    """SA2RAGE acquisition parameters (BIDS ``TB1SRGE`` keys in brackets).

    Parameters
    ----------
    repetition_time_preparation_s : float
        Time between two saturation pulses, s [``RepetitionTimePreparation``].
    repetition_time_excitation_s : float
        Echo spacing of both readout trains, s [``RepetitionTimeExcitation``].
    inversion_times_s : tuple of 2 float
        Delays from the saturation to the k-space-centre excitation of each readout, s
        [``InversionTime``].
    flip_angles_deg : tuple of 2 float
        Nominal readout flip angles, degrees, in (0, 180) [``FlipAngle``].
    shots_before, shots_after : float
        Excitations per readout before and from the k-space centre, > 0 and possibly
        non-integer [``NumberShots`` = ``[before, after]``].
    saturation_flip_deg : float, optional
        Nominal flip of the saturation pulse, degrees, in (0, 180); default 90.

    Raises
    ------
    SA2RAGEProtocolError
        If a value has the wrong type or range, or the timing is infeasible: the first readout
        must start after the saturation (``TI1 - shots_before * tau >= 0``), the readouts must
        not overlap (``TI2 - shots_before * tau >= TI1 + shots_after * tau``) and the second
        must end before the next saturation (``TI2 + shots_after * tau <= TR_prep``).

    Notes
    -----
    Instances are immutable and hashable (the look-up tables are cached per protocol); values
    are coerced to ``float`` and pairs to tuples on construction.
    """

    repetition_time_preparation_s: float
    repetition_time_excitation_s: float
    inversion_times_s: tuple[float, float]
    flip_angles_deg: tuple[float, float]
    shots_before: float
    shots_after: float
    saturation_flip_deg: float = 90.0

    def __post_init__(self) -> None:
        tr = _positive("RepetitionTimePreparation", self.repetition_time_preparation_s, "s")
        tau = _positive("RepetitionTimeExcitation", self.repetition_time_excitation_s, "s")
        ti = tuple(_positive(f"InversionTime[{k}]", v, "s")
                   for k, v in enumerate(_pair("InversionTime", self.inversion_times_s)))
        flips = tuple(_flip(f"FlipAngle[{k}]", v)
                      for k, v in enumerate(_pair("FlipAngle", self.flip_angles_deg)))
        before = _positive("NumberShots[0] (shots_before)", self.shots_before, "excitations")
        after = _positive("NumberShots[1] (shots_after)", self.shots_after, "excitations")
        sat = _flip("saturation_flip_deg", self.saturation_flip_deg)
        for name, value in (("repetition_time_preparation_s", tr),
                            ("repetition_time_excitation_s", tau), ("inversion_times_s", ti),
                            ("flip_angles_deg", flips), ("shots_before", before),
                            ("shots_after", after), ("saturation_flip_deg", sat)):
            object.__setattr__(self, name, value)

        tol = _TIMING_TOLERANCE_S
        start1 = ti[0] - before * tau
        if start1 < -tol:
            raise SA2RAGEProtocolError(
                "infeasible SA2RAGE timing: the first readout would start before the "
                f"saturation: InversionTime[0] - NumberShots[0] * RepetitionTimeExcitation = "
                f"{ti[0]:g} - {before:g} * {tau:g} = {start1:.6g} s < 0")
        end1, start2 = ti[0] + after * tau, ti[1] - before * tau
        if start2 < end1 - tol:
            raise SA2RAGEProtocolError(
                "infeasible SA2RAGE timing: the readouts overlap: InversionTime[1] - "
                f"NumberShots[0] * RepetitionTimeExcitation = {ti[1]:g} - {before:g} * {tau:g} "
                f"= {start2:.6g} s < InversionTime[0] + NumberShots[1] * "
                f"RepetitionTimeExcitation = {ti[0]:g} + {after:g} * {tau:g} = {end1:.6g} s")
        end2 = ti[1] + after * tau
        if end2 > tr + tol:
            raise SA2RAGEProtocolError(
                "infeasible SA2RAGE timing: the second readout ends after the next saturation: "
                f"InversionTime[1] + NumberShots[1] * RepetitionTimeExcitation = {ti[1]:g} + "
                f"{after:g} * {tau:g} = {end2:.6g} s > RepetitionTimePreparation = {tr:g} s")

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> SA2RAGEProtocol:
        """Build a protocol from BIDS keys (SI units: s, degrees).

        Parameters
        ----------
        metadata : dict
            ``RepetitionTimePreparation``, ``RepetitionTimeExcitation``, ``InversionTime``
            (two values), ``FlipAngle`` (two values) and ``NumberShots``: a pair
            ``[before, after]`` taken literally, or one number ``N``, the total per readout,
            split ``N / 2, N / 2`` (as Marques's implementation does; counts may be
            non-integer).

        Returns
        -------
        SA2RAGEProtocol

        Raises
        ------
        KeyError
            If a required key is missing.
        SA2RAGEProtocolError
            If a value is invalid (see the class).
        """
        shots = metadata["NumberShots"]
        if isinstance(shots, str | bytes) or np.ndim(shots) > 1:
            raise SA2RAGEProtocolError(
                f"NumberShots must be a number or [before, after], got {shots!r}")
        if np.ndim(shots) == 1 and len(shots) == 1:
            shots = shots[0]
        if np.ndim(shots) == 0:
            # one number is the total per readout: half before, half from the centre
            total = _positive("NumberShots", shots, "excitations")
            before = after = total / 2.0
        elif len(shots) == 2:
            before, after = shots
        else:
            raise SA2RAGEProtocolError(
                f"NumberShots must be a number or [before, after], got {shots!r}")
        return cls(
            repetition_time_preparation_s=metadata["RepetitionTimePreparation"],
            repetition_time_excitation_s=metadata["RepetitionTimeExcitation"],
            inversion_times_s=_pair("InversionTime", metadata["InversionTime"]),
            flip_angles_deg=_pair("FlipAngle", metadata["FlipAngle"]),
            shots_before=before,
            shots_after=after,
        )

    def as_metadata(self) -> dict[str, Any]:
        """The protocol as BIDS sidecar keys (``NumberShots`` as ``[before, after]``).

        The saturation flip has no BIDS key and is left out (the default, 90 degrees, is what
        :meth:`from_metadata` assumes).
        """
        return {
            "RepetitionTimePreparation": self.repetition_time_preparation_s,
            "RepetitionTimeExcitation": self.repetition_time_excitation_s,
            "InversionTime": list(self.inversion_times_s),
            "FlipAngle": list(self.flip_angles_deg),
            "NumberShots": [self.shots_before, self.shots_after],
        }


# ------------------------------------------------------------------------------- signal model


def sa2rage_signals(
    t1_s: ArrayLike,
    protocol: SA2RAGEProtocol,
    b1: ArrayLike = 1.0,
    m0: ArrayLike = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state SA2RAGE signals at the k-space centres of both readouts.

    Parameters
    ----------
    t1_s : array_like
        T1, s (> 0; other values give NaN).
    protocol : SA2RAGEProtocol
        Acquisition parameters.
    b1 : array_like, optional
        B1+ as a fraction of nominal; scales the saturation and both readout flips. Default 1.
    m0 : array_like, optional
        Equilibrium magnetisation times receive gain. Default 1.

    Returns
    -------
    s1, s2 : numpy.ndarray of float64
        Signed signals ``m0 Mz(TIk^-) sin(b1 alpha_k)`` in the broadcast shape of the inputs.
        ``s1`` is negative where the saturation over-flips enough (B1+ somewhat above 1 for a
        short first delay), ``s2`` is positive for practical protocols.
    """
    p = protocol
    b1_a = np.asarray(b1, dtype=np.float64)
    tau = p.repetition_time_excitation_s
    return _two_train_signals(
        t1_s,
        b1_a,
        m0,
        repetition_time_preparation_s=p.repetition_time_preparation_s,
        echo_spacings_s=(tau, tau),
        centre_times_s=p.inversion_times_s,
        flip_angles_deg=p.flip_angles_deg,
        shots=(p.shots_before, p.shots_after),
        # the saturation is B1-dependent: Mz -> cos(b1 theta_sat) Mz
        preparation=np.cos(b1_a * np.deg2rad(p.saturation_flip_deg)),
    )


def sa2rage_ratio(b1: ArrayLike, t1_s: ArrayLike, protocol: SA2RAGEProtocol) -> np.ndarray:
    """Model ratio ``S1 / S2`` (signed), the quantity SA2RAGE measures.

    Parameters
    ----------
    b1 : array_like
        B1+, fraction of nominal.
    t1_s : array_like
        T1, s.
    protocol : SA2RAGEProtocol

    Returns
    -------
    numpy.ndarray of float64
        ``S1 / S2`` in the broadcast shape (independent of M0).
    """
    s1, s2 = sa2rage_signals(t1_s, protocol, b1=b1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s1 / s2


# ------------------------------------------------------------------------------ look-up table


class _Table(NamedTuple):
    """Inverse of the ratio on its monotonic branch, one row per tabulated T1.

    Row ``r`` is ``ratio[start[r]:stop[r]]`` (increasing) against ``b1[start[r]:stop[r]]``,
    stored consecutively in ``ratio`` / ``b1``. ``key = ratio - ratio_min + r * span`` is
    increasing over the whole concatenation, so one ``searchsorted`` finds the interval of
    every voxel in its own row.
    """

    ratio: np.ndarray
    b1: np.ndarray
    key: np.ndarray
    start: np.ndarray  # (n_rows,) int
    stop: np.ndarray  # (n_rows,) int, stop - start >= 2 for a usable row
    lo: np.ndarray  # (n_rows,) smallest / largest ratio of the row (+inf / -inf: unusable)
    hi: np.ndarray
    ratio_min: float
    span: float


def _b1_grid(b1_range: tuple[float, float]) -> np.ndarray:
    lo, hi = b1_range
    n = max(int(math.ceil((hi - lo) / LUT_B1_STEP - 1e-9)) + 1, 2)
    return np.linspace(lo, hi, n)


def _monotonic_run(ratio: np.ndarray, b1: np.ndarray) -> tuple[int, int]:
    """Sample range ``[start, stop)`` of the strictly monotonic run of ``ratio`` that contains
    B1 = 1 (the longest run when 1 is outside the grid); ``(0, 0)`` if there is none.

    Non-finite samples end a run. Anchoring at B1 = 1 keeps the branch that real data lie on
    even if the ends of the grid fold back (the ratio turns at B1 ~ 2.2 for usual protocols,
    where the saturation passes 180 degrees).
    """
    step = np.diff(ratio)
    direction = np.where(np.isfinite(step), np.sign(step), 0.0)
    # run boundaries: every change of direction, and every zero (flat or non-finite) step
    change = np.flatnonzero((direction[1:] != direction[:-1]) | (direction[1:] == 0)) + 1
    edges = np.concatenate(([0], change, [step.size]))
    runs = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)
            if b > a and direction[a] != 0]
    if not runs:
        return 0, 0
    if b1[0] <= 1.0 <= b1[-1]:
        at = min(int(np.searchsorted(b1, 1.0)), step.size - 1)
        for a, b in runs:
            if a <= at < b:
                return a, b + 1
    a, b = max(runs, key=lambda run: run[1] - run[0])
    return a, b + 1


@functools.lru_cache(maxsize=32)
def _build_table(
    protocol: SA2RAGEProtocol, b1_range: tuple[float, float], t1_rows_s: tuple[float, ...]
) -> _Table:
    """Tabulate (and cache) the ratio over the B1 grid of ``b1_range`` at each T1 row."""
    b1 = _b1_grid(b1_range)
    ratio = sa2rage_ratio(b1[np.newaxis, :], np.asarray(t1_rows_s)[:, np.newaxis], protocol)
    finite = ratio[np.isfinite(ratio)]
    ratio_min = float(finite.min()) if finite.size else 0.0
    span = (float(finite.max()) - ratio_min if finite.size else 0.0) + 1.0
    parts_r, parts_b, starts, stops = [], [], [], []
    count = 0
    for row in ratio:  # one row per tabulated T1 (at most LUT_T1_SAMPLES), not per voxel
        a, b = _monotonic_run(row, b1)
        r, g = row[a:b], b1[a:b]
        if r.size and r[-1] < r[0]:  # searchsorted needs increasing abscissae
            r, g = r[::-1], g[::-1]
        parts_r.append(r)
        parts_b.append(g)
        starts.append(count)
        count += r.size
        stops.append(count)
    start, stop = np.array(starts), np.array(stops)
    usable = stop - start >= 2
    cat_r = np.concatenate(parts_r)
    key = cat_r - ratio_min + np.repeat(np.arange(len(parts_r)) * span, stop - start)
    lo = np.where(usable, cat_r[np.minimum(start, count - 1)] if count else np.inf, np.inf)
    hi = np.where(usable, cat_r[np.maximum(stop - 1, 0)] if count else -np.inf, -np.inf)
    return _Table(cat_r, np.concatenate(parts_b), key, start, stop, lo, hi, ratio_min, span)


def _invert(table: _Table, rows: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """B1 at ``measured`` ratios, each in its own table row (NaN outside the row's range)."""
    inside = (measured >= table.lo[rows]) & (measured <= table.hi[rows])
    out = np.full(measured.shape, np.nan)
    if not inside.any():
        return out
    r, m = rows[inside], measured[inside]
    j = np.searchsorted(table.key, m - table.ratio_min + r * table.span, side="right") - 1
    # keep j in the row (the shifted key may round across a row end by an ulp)
    j = np.clip(j, table.start[r], table.stop[r] - 2)
    x0, x1 = table.ratio[j], table.ratio[j + 1]
    y0, y1 = table.b1[j], table.b1[j + 1]
    out[inside] = y0 + (y1 - y0) * ((m - x0) / (x1 - x0))
    return out


def _check_b1_range(b1_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in b1_range)
    except (TypeError, ValueError):
        raise ValueError(f"b1_range must be two numbers, got {b1_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"b1_range must satisfy 0 < low < high, got {b1_range!r}")
    return lo, hi


def b1_from_sa2rage(
    s1: ArrayLike,
    s2: ArrayLike,
    protocol: SA2RAGEProtocol,
    t1_s: ArrayLike = NOMINAL_T1_S,
    mask: ArrayLike | None = None,
    b1_range: tuple[float, float] = DEFAULT_B1_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """B1+ (fraction of nominal) from the two SA2RAGE images by look-up of their ratio.

    The model ratio ``S1 / S2`` is tabulated on a B1+ grid over ``b1_range`` (step
    :data:`LUT_B1_STEP`) and restricted to its monotonic branch containing B1+ = 1; each
    voxel's ratio is inverted by linear interpolation on it (``searchsorted``, no voxel
    loop). Tables are cached per protocol, range and T1 rows.

    Parameters
    ----------
    s1, s2 : array_like
        Images of the first (short delay) and second readout, broadcastable. ``s1`` should be
        **signed** (real, the magnitude times the sign of ``cos(phase1 - phase2)``) or
        complex: it changes sign where the saturation over-flips (B1+ ~ 1.04 for the
        Marques protocol), and a magnitude ratio above that B1+ is read as the B1+ below
        the crossing with the same ``|S1| / S2`` (see :func:`sign_change_b1`). ``s2`` is a
        magnitude (it is positive in the model). Complex pairs give the ratio
        ``Re(S1 conj(S2)) / |S2|^2`` (the common coil phase cancels).
    protocol : SA2RAGEProtocol
        Acquisition parameters.
    t1_s : float or array_like, optional
        T1 assumed for every voxel, s (default :data:`NOMINAL_T1_S`: a one-dimensional table
        at exactly that T1), or a T1 map broadcastable to the images: then a table with
        :data:`LUT_T1_SAMPLES` log-spaced rows over :data:`LUT_T1_RANGE_S` is interpolated
        bilinearly (linear in the ratio within a row, linear in log T1 between rows; T1 is
        clipped to the range). Voxels with a non-finite or non-positive T1 are invalid.
    mask : array_like of bool, optional
        Voxels to compute (others are invalid), broadcastable to the images.
    b1_range : tuple of 2 float, optional
        B1+ range of the table; a ratio outside the range the branch covers there is invalid.

    Returns
    -------
    b1 : numpy.ndarray of float64
        B1+ as a fraction of nominal; **0** where invalid (the project's "no B1+ here").
    valid : numpy.ndarray of bool
        Finite signals with ``S2 > 0`` (``|S2| > 0`` for complex data) inside the mask whose
        ratio lies on the table's branch (and, with a T1 map, a usable T1).

    Raises
    ------
    ValueError
        If ``b1_range`` is not ``0 < low < high``, a scalar ``t1_s`` is not a positive
        number, or the shapes do not broadcast.
    """
    rng = _check_b1_range(b1_range)
    t1 = np.asarray(t1_s, dtype=np.float64)
    arrays = [np.asarray(s1), np.asarray(s2)]
    if t1.ndim:
        arrays.append(t1)
    if mask is not None:
        arrays.append(np.asarray(mask, dtype=bool))
    arrays = np.broadcast_arrays(*arrays)
    a, b = arrays[0], arrays[1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if np.iscomplexobj(a) or np.iscomplexobj(b):
            a = a.astype(np.complex128)
            b = b.astype(np.complex128)
            den = b.real * b.real + b.imag * b.imag
            ok = np.isfinite(a) & np.isfinite(b) & (den > 0)
            ratio = (a.real * b.real + a.imag * b.imag) / np.where(ok, den, 1.0)
        else:
            a = a.astype(np.float64)
            b = b.astype(np.float64)
            ok = np.isfinite(a) & np.isfinite(b) & (b > 0)
            ratio = a / np.where(ok, b, 1.0)
        ok &= np.isfinite(ratio)
    if mask is not None:
        ok &= arrays[-1]
    b1 = np.full(ok.shape, np.nan)
    if t1.ndim == 0:
        if not (math.isfinite(float(t1)) and float(t1) > 0):
            raise ValueError(f"t1_s must be a positive number of seconds, got {float(t1)}")
        table = _build_table(protocol, rng, (float(t1),))
        sel = np.flatnonzero(ok)
        b1.flat[sel] = _invert(table, np.zeros(sel.size, dtype=np.intp), ratio.flat[sel])
    else:
        t1_map = arrays[2]
        ok &= np.isfinite(t1_map) & (t1_map > 0)
        sel = np.flatnonzero(ok)
        rows_t1 = np.geomspace(*LUT_T1_RANGE_S, LUT_T1_SAMPLES)
        table = _build_table(protocol, rng, tuple(float(v) for v in rows_t1))
        log_t1 = np.log(np.clip(t1_map.flat[sel], *LUT_T1_RANGE_S))
        pos = (log_t1 - math.log(rows_t1[0])) / math.log(rows_t1[1] / rows_t1[0])
        low = np.clip(np.floor(pos).astype(np.intp), 0, LUT_T1_SAMPLES - 2)
        w = np.clip(pos - low, 0.0, 1.0)
        m = ratio.flat[sel]
        b_low = _invert(table, low, m)
        b_high = _invert(table, low + 1, m)
        # a weight of exactly 0 or 1 needs only one row (T1 on a row, or clipped to the range)
        mixed = (1.0 - w) * b_low + w * b_high
        b1.flat[sel] = np.where(w == 0.0, b_low, np.where(w == 1.0, b_high, mixed))
    valid = ok & np.isfinite(b1) & (b1 >= rng[0]) & (b1 <= rng[1])
    return np.where(valid, b1, 0.0), valid


# ------------------------------------------------------------------------ protocol diagnostics


def sign_change_b1(protocol: SA2RAGEProtocol, t1_s: float = NOMINAL_T1_S) -> float:
    """B1+ at which the first readout's signal changes sign (magnitudes become ambiguous).

    Parameters
    ----------
    protocol : SA2RAGEProtocol
    t1_s : float, optional
        T1, s (default :data:`NOMINAL_T1_S`).

    Returns
    -------
    float
        The lowest B1+ in :data:`DEFAULT_B1_RANGE` where ``S1`` crosses zero (root refined by
        Brent's method), or ``inf`` if it keeps its sign over the range.
    """
    grid = _b1_grid(DEFAULT_B1_RANGE)
    s1, _ = sa2rage_signals(t1_s, protocol, b1=grid)
    flips = np.flatnonzero(np.sign(s1[1:]) != np.sign(s1[:-1]))
    if not flips.size:
        return float("inf")
    k = int(flips[0])
    if s1[k + 1] == 0.0:
        return float(grid[k + 1])

    def first_signal(b1: float) -> float:
        return float(sa2rage_signals(t1_s, protocol, b1=b1)[0])

    return float(brentq(first_signal, grid[k], grid[k + 1], xtol=1e-12))


def sa2rage_t1_sensitivity(
    protocol: SA2RAGEProtocol,
    b1: float = 1.0,
    t1_range_s: tuple[float, float] = (0.8, 2.5),
) -> float:
    """Largest relative B1+ error of the look-up at :data:`NOMINAL_T1_S` over a T1 range.

    Signals are simulated at the true ``b1`` for T1 sampled densely over ``t1_range_s``
    (ends included) and inverted with the nominal T1, as :func:`b1_from_sa2rage` does
    without a T1 map; the result documents that approximation for a protocol.

    Parameters
    ----------
    protocol : SA2RAGEProtocol
    b1 : float, optional
        True B1+, fraction of nominal (default 1).
    t1_range_s : tuple of 2 float, optional
        Tissue T1 range, s (default 0.8-2.5 s: white matter to grey matter and lesions at
        3-7 T).

    Returns
    -------
    float
        ``max |b1_estimate / b1 - 1|`` (e.g. 0.02 for 2 %); ``inf`` if some T1 gives a ratio
        the nominal table cannot invert.
    """
    t1 = np.linspace(float(t1_range_s[0]), float(t1_range_s[1]), 257)
    s1, s2 = sa2rage_signals(t1, protocol, b1=b1)
    estimate, valid = b1_from_sa2rage(s1, s2, protocol, t1_s=NOMINAL_T1_S)
    if not valid.all():
        return float("inf")
    return float(np.max(np.abs(estimate / b1 - 1.0)))
