"""B1+ (transmit field) maps: units, plausibility, and B1+ from raw acquisitions.

Everything downstream in bids-agquant uses B1+ as a **fraction** of nominal
(``alpha_eff = b1 * alpha_nominal``); 0 (or a non-finite value) means "no B1+ here" and is
masked by the fits.

* :func:`decide_b1_units` / :func:`to_fraction`: BIDS ``TB1map`` files are "RECOMMENDED to be
  represented as percent multiplicative factors", but real files come as a fraction, percent,
  per mille (SA2RAGE exports B1 × 1000), degrees (the achieved flip angle) or 10 × degrees
  (Siemens ``tfl_b1map`` famp). ``--b1-units`` decides, else the sidecar ``Units``; without
  either the values decide only where that is unambiguous, and say so.
* :func:`b1_plausibility`: median and coverage of a map inside a head mask.
* :func:`b1_from_tfl`, :func:`b1_from_afi`, :func:`b1_from_dam`: closed forms of the raw
  representations; :func:`afi_signals`, :func:`dam_signals`: their forward models (reference
  dataset, tests). SA2RAGE is in :mod:`bids_agquant.qmri.sa2rage`.

Units: flip angles in degrees, times and T1 in seconds, B1+ as a fraction of nominal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "B1_UNIT_CHOICES",
    "B1Plausibility",
    "B1UnitsDecision",
    "B1UnitsError",
    "MIN_HEAD_COVERAGE",
    "PLAUSIBLE_MEDIAN_FRACTION",
    "afi_signals",
    "b1_from_afi",
    "b1_from_dam",
    "b1_from_tfl",
    "b1_plausibility",
    "b1_to_fraction",
    "dam_signals",
    "decide_b1_units",
    "to_fraction",
]

#: Values of ``--b1-units``: the units of a given TB1map, overriding its sidecar. Plain
#: degrees are not offered: nobody exports them without a ``Units`` key saying so, and they
#: look like percent (60-90 deg prep pulses).
B1_UNIT_CHOICES = ("fraction", "percent", "degrees-x10", "per-mille")

#: Recognised sidecar ``Units`` (lower case, trimmed, inner whitespace collapsed) → canonical.
_UNIT_SYNONYMS = {
    **dict.fromkeys(("fraction", "ratio", "1", "a.u.", "a.u", "au", "unitless",
                     "dimensionless", "arbitrary", "arbitrary units"), "fraction"),
    # The hMRI toolbox writes its B1 maps in "p.u." (percent units).
    **dict.fromkeys(("percent", "%", "pct", "percentage", "percent of nominal", "p.u.", "pu",
                     "1/100", "fraction*100", "x100"), "percent"),
    **dict.fromkeys(("per-mille", "permille", "per mille", "‰", "1/1000", "fraction*1000",
                     "x1000", "fraction x 1000"), "per-mille"),
    **dict.fromkeys(("deg", "degree", "degrees", "°"), "degrees"),
    **dict.fromkeys(("degrees-x10", "deg*10", "degrees*10", "0.1 deg", "0.1deg",
                     "decidegrees", "degrees x 10", "deg x 10", "10*deg", "10 x degrees"),
                    "degrees-x10"),
}

#: ``Units`` values that mean "not stated" ("n/a" is BIDS's missing-value marker).
_MISSING = frozenset({"", "n/a", "na", "none", "null", "unknown"})

#: Guess rule without ``Units``: median of the finite positive values ≤ 5 → fraction,
#: ≤ 300 → percent; above, per mille and 10 × degrees of an 80–90° pulse overlap (both give
#: 800–1000 for a head), so the values cannot decide.
_GUESS_FRACTION_MAX, _GUESS_PERCENT_MAX = 5.0, 300.0

#: Declared units contradict the values "grossly" when the median B1 they imply is at most
#: 0.05 or above 5: that catches the factor-100 confusions (fraction ↔ percent, percent ↔
#: 10 × degrees) whatever the background does to the whole-image median. Factor-10 confusions
#: are left to :func:`b1_plausibility`, whose median is taken inside the head only.
_GROSS_FRACTION = (0.05, 5.0)

#: Plausible median B1+ fraction in a head (1.5–7 T), and the part of the T1 method's head
#: mask the map must cover.
PLAUSIBLE_MEDIAN_FRACTION = (0.4, 1.8)
MIN_HEAD_COVERAGE = 0.9

_OPTIONS = "|".join(B1_UNIT_CHOICES)


class B1UnitsError(ValueError):
    """The units of a B1+ map cannot be decided; the message says why and how to fix it."""


@dataclass(frozen=True)
class B1UnitsDecision:
    """How a stored B1+ map is read.

    Attributes
    ----------
    units : str
        ``fraction``, ``percent``, ``per-mille``, ``degrees`` or ``degrees-x10``.
    scale_description : str
        What is done to the values, e.g. ``"divided by 100"`` or ``"divided by 10 ×
        FlipAngle 80°"``.
    source : str
        ``"override"`` (``--b1-units``), ``"sidecar"`` (``Units``) or ``"guess"`` (values).
    reason : str
        One sentence: what the decision rests on.
    warnings : tuple of str
        Gross contradictions between the declared units and the values (the decision stands).
    nominal_flip_deg : float or None
        The FlipAngle (degrees) a ``degrees`` / ``degrees-x10`` map is divided by; used by
        :func:`to_fraction` when it is not given there.
    """

    units: str
    scale_description: str
    source: str
    reason: str
    warnings: tuple[str, ...] = ()
    nominal_flip_deg: float | None = None

    @property
    def guessed(self) -> bool:
        """True when the units were guessed from the values (no override, no ``Units``)."""
        return self.source == "guess"

    def describe(self) -> str:
        """One line for the log and the sidecars; starts with ``WARNING:`` for a guess.

        The :attr:`warnings` are not included: callers log them one per line
        (:func:`b1_to_fraction` appends them).
        """
        text = f"B1+ map taken as {self.units} ({self.reason}); {self.scale_description}"
        return f"WARNING: {text}" if self.guessed else text


def _normalise(text: object) -> str:
    return re.sub(r"\s+", " ", str(text).strip().lower())


def _flip_or_none(nominal_flip_deg: float | None) -> float | None:
    """The nominal flip as a float if it is usable (finite, > 0), else None."""
    if nominal_flip_deg is None:
        return None
    flip = float(nominal_flip_deg)
    return flip if math.isfinite(flip) and flip > 0 else None


def _positive_median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values) & (values > 0)]
    return float(np.median(finite)) if finite.size else float("nan")


def _divisor(units: str, nominal_flip_deg: float | None) -> tuple[float, str]:
    """What a map in ``units`` is divided by to give a fraction, and how to say it."""
    if units == "fraction":
        return 1.0, "used as is"
    if units == "percent":
        return 100.0, "divided by 100"
    if units == "per-mille":
        return 1000.0, "divided by 1000"
    flip = _flip_or_none(nominal_flip_deg)
    if flip is None:
        given = "" if nominal_flip_deg is None else f" (got {nominal_flip_deg!r})"
        raise B1UnitsError(f"a B1+ map in {units} needs the nominal flip angle (sidecar key "
                           f"'FlipAngle', degrees > 0){given} to divide by; add it to the "
                           f"sidecar, or give --b1-units {_OPTIONS}")
    if units == "degrees":
        return flip, f"divided by FlipAngle {flip:g}°"
    return 10.0 * flip, f"divided by 10 × FlipAngle {flip:g}°"


def _looks_like(median: float) -> str:
    """The guess rule's reading of a median, in words (for warnings and errors)."""
    if median <= _GUESS_FRACTION_MAX:
        return "a fraction"
    if median <= _GUESS_PERCENT_MAX:
        return "percent (or degrees)"
    return "per mille or 10 × degrees"


def decide_b1_units(values: ArrayLike, units: str | None = None, *,
                    override: str | None = None,
                    nominal_flip_deg: float | None = None) -> B1UnitsDecision:
    """Decide how a stored B1+ map converts to a fraction of nominal.

    Order: ``override`` (``--b1-units``), else the sidecar ``units``, else a guess from the
    median of the finite positive values (≤ 5 fraction, ≤ 300 percent, above: refused).

    Parameters
    ----------
    values : array_like
        The map as stored (any shape, any units).
    units : str, optional
        Its sidecar ``Units``; case and surrounding whitespace are ignored. ``None``, ``""``
        and ``"n/a"`` mean not stated.
    override : str, optional
        ``--b1-units``, one of :data:`B1_UNIT_CHOICES` (case-insensitive); wins over
        ``units``.
    nominal_flip_deg : float, optional
        The sidecar ``FlipAngle`` in degrees: needed for maps in degrees or 10 × degrees, and
        used to word the refusal of an ambiguous guess.

    Returns
    -------
    B1UnitsDecision
        With ``warnings`` when the declared units imply a median B1 ≤ 0.05 or > 5.

    Raises
    ------
    B1UnitsError
        No finite positive value; an ``override`` not in :data:`B1_UNIT_CHOICES`; an
        unrecognised ``Units``; degrees without a usable nominal flip; no ``Units`` and a
        median above 300 (e.g. 800: per mille, or 10 × degrees of an 80° pulse).
    """
    arr = np.asarray(values, dtype=np.float64)
    median = _positive_median(arr)
    if not np.isfinite(median):
        raise B1UnitsError("the B1+ map has no finite positive value (all zero, negative or "
                           f"non-finite): no --b1-units ({_OPTIONS}) can make it usable; "
                           "check the file")
    flip = _flip_or_none(nominal_flip_deg)
    stated = None if units is None or _normalise(units) in _MISSING else _normalise(units)

    if override is not None:
        key = _normalise(override)
        if key not in B1_UNIT_CHOICES:
            raise B1UnitsError(f"--b1-units {override!r} is not one of {_OPTIONS}")
        canonical, source, reason = key, "override", f"--b1-units {key}"
        if stated is not None and _UNIT_SYNONYMS.get(stated) != key:
            reason += f", overriding sidecar Units {units!r}"
    elif stated is not None:
        if stated not in _UNIT_SYNONYMS:
            known = ", ".join(repr(k) for k in _UNIT_SYNONYMS)
            raise B1UnitsError(f"sidecar Units {units!r} is not a B1+ unit this app knows "
                               f"(it knows {known}); fix the sidecar or give --b1-units "
                               f"{_OPTIONS}")
        canonical, source = _UNIT_SYNONYMS[stated], "sidecar"
        reason = f"sidecar Units {units!r}"
    else:
        source = "guess"
        if median <= _GUESS_FRACTION_MAX:
            canonical = "fraction"
        elif median <= _GUESS_PERCENT_MAX:
            canonical = "percent"
        else:
            if flip is not None:
                x10 = f"median B1 {median / (10 * flip):.3g} with FlipAngle {flip:g}°"
            else:
                x10 = (f"median B1 {median / 900:.3g}-{median / 800:.3g} for an 80-90° "
                       "preparation pulse")
            raise B1UnitsError(
                f"no Units in the sidecar and a median value of {median:.4g}: either per mille "
                f"(per-mille, SA2RAGE exports: median B1 {median / 1000:.3g}) or 10 × the "
                f"achieved flip angle in degrees (degrees-x10, Siemens tfl_b1map famp: {x10}); "
                "the values cannot tell them apart: add Units to the sidecar or give "
                f"--b1-units {_OPTIONS}")
        reason = (f"no Units key in the sidecar; guessed from the median of the finite "
                  f"positive values, {median:.4g} (rule: <= {_GUESS_FRACTION_MAX:g} fraction, "
                  f"<= {_GUESS_PERCENT_MAX:g} percent, above refused)")
        if canonical == "percent":
            reason += "; a map in degrees would look the same"

    divisor, scale = _divisor(canonical, flip if canonical.startswith("degrees") else None)
    warnings: list[str] = []
    implied = median / divisor
    lo, hi = _GROSS_FRACTION
    if source != "guess" and not lo < implied <= hi:
        said = "--b1-units" if source == "override" else "the sidecar"
        warnings.append(f"{said} says {canonical} but the median of the finite positive values "
                        f"is {median:.4g}, a median B1 of {implied:.3g}; the values look like "
                        f"{_looks_like(median)}: check the Units or give --b1-units")
    return B1UnitsDecision(canonical, scale, source, reason, tuple(warnings),
                           flip if canonical.startswith("degrees") else None)


def to_fraction(values: ArrayLike, decision: B1UnitsDecision,
                nominal_flip_deg: float | None = None) -> np.ndarray:
    """Convert a stored map to a fraction of nominal as decided.

    Parameters
    ----------
    values : array_like
        The map as stored.
    decision : B1UnitsDecision
        From :func:`decide_b1_units`.
    nominal_flip_deg : float, optional
        FlipAngle (degrees) for ``degrees`` / ``degrees-x10``; defaults to the decision's.

    Returns
    -------
    ndarray of float64
        Same shape; non-finite values become 0 ("no B1+ here"). Negative values are divided
        like the others (the fits mask ``b1 <= 0``).

    Raises
    ------
    B1UnitsError
        Degrees without a nominal flip angle.
    ValueError
        ``nominal_flip_deg`` differs from the one the decision was taken with.
    """
    arr = np.asarray(values, dtype=np.float64)
    flip = decision.nominal_flip_deg
    if nominal_flip_deg is not None and decision.units.startswith("degrees"):
        # Two different flips for one map is a caller's bug, not a units question.
        if flip is not None and _flip_or_none(nominal_flip_deg) != flip:
            raise ValueError(f"nominal flip {nominal_flip_deg!r} deg differs from the "
                             f"{flip:g} deg the units decision was taken with")
        flip = nominal_flip_deg  # _divisor refuses an unusable one
    divisor, _ = _divisor(decision.units, flip)
    return np.where(np.isfinite(arr), arr, 0.0) / divisor


def b1_to_fraction(values: ArrayLike, units: str | None = None, *, override: str | None = None,
                   nominal_flip_deg: float | None = None) -> tuple[np.ndarray, str]:
    """:func:`decide_b1_units` then :func:`to_fraction`: ``(fraction, decision line)``.

    Parameters
    ----------
    values, units, override, nominal_flip_deg
        As :func:`decide_b1_units`.

    Returns
    -------
    fraction : ndarray of float64
        As :func:`to_fraction`.
    decision : str
        :meth:`B1UnitsDecision.describe`, then its warnings and the count of non-finite
        values set to 0; contains ``WARNING`` when the units were guessed or contradict the
        values.

    Raises
    ------
    B1UnitsError
        As :func:`decide_b1_units`.
    """
    arr = np.asarray(values, dtype=np.float64)
    decision = decide_b1_units(arr, units, override=override,
                               nominal_flip_deg=nominal_flip_deg)
    text = decision.describe()
    if decision.warnings:
        text += "; WARNING: " + "; ".join(decision.warnings)
    n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        text += f"; {n_bad} non-finite value(s) set to 0"
    return to_fraction(arr, decision), text


# --------------------------------------------------------------------------- plausibility
@dataclass(frozen=True)
class B1Plausibility:
    """Median and coverage of a B1+ fraction map inside a head mask.

    Attributes
    ----------
    median : float
        Median B1+ (fraction of nominal) over the head voxels the map covers; NaN if none.
    coverage : float
        Fraction (0-1) of the head-mask voxels where the map is finite and > 0.
    n_head : int
        Voxels in the head mask.
    """

    median: float
    coverage: float
    n_head: int

    @property
    def ok(self) -> bool:
        """Median within :data:`PLAUSIBLE_MEDIAN_FRACTION` and coverage at least
        :data:`MIN_HEAD_COVERAGE`."""
        return not self.problems()

    def problems(self) -> list[str]:
        """What is wrong, one sentence each naming the number found and the limit (empty
        when :attr:`ok`)."""
        lo, hi = PLAUSIBLE_MEDIAN_FRACTION
        if self.n_head == 0:
            return ["the head mask is empty: the B1+ map cannot be checked against it"]
        out = []
        if not np.isfinite(self.median):
            out.append("the B1+ map has no positive value inside the head")
        elif not lo <= self.median <= hi:
            out.append(f"median B1+ {self.median:.3g} inside the head is outside the plausible "
                       f"{lo:g}-{hi:g} (fraction of nominal): check the units")
        if self.coverage < MIN_HEAD_COVERAGE:
            covered = round(self.coverage * self.n_head)
            out.append(f"the B1+ map covers {100 * self.coverage:.1f} % of the head "
                       f"({covered} of {self.n_head} voxels; at least "
                       f"{100 * MIN_HEAD_COVERAGE:g} % needed)")
        return out


def b1_plausibility(b1_fraction: ArrayLike, head_mask: ArrayLike) -> B1Plausibility:
    """Median B1+ inside ``head_mask`` (where covered) and the covered part of the mask.

    Parameters
    ----------
    b1_fraction : array_like
        B1+ as a fraction of nominal; a voxel is covered when it is finite and > 0.
    head_mask : array_like of bool
        The head, same shape.

    Returns
    -------
    B1Plausibility

    Raises
    ------
    ValueError
        The shapes differ.
    """
    head = np.asarray(head_mask, dtype=bool)
    b1 = np.asarray(b1_fraction, dtype=np.float64)
    if b1.shape != head.shape:
        raise ValueError(f"B1+ map shape {b1.shape} does not match the head mask {head.shape}")
    values = b1[head]
    covered = np.isfinite(values) & (values > 0)
    median = float(np.median(values[covered])) if covered.any() else float("nan")
    coverage = float(covered.mean()) if values.size else 0.0
    return B1Plausibility(median, coverage, int(values.size))


# --------------------------------------------------------------------------- raw acquisitions
#: cos(alpha) is clipped into [-1, 1] within this (rounding); beyond, the voxel is invalid
#: (0). The choice is not a noise model: with positive signals AFI gives cos alpha > -1/n and
#: DAM cos alpha > 0, so only the upper side can be crossed, by noise where alpha ≈ 0, and
#: there clipping would give alpha = 0, i.e. B1 = 0 = "no B1+ here", the same as invalid.
_COS_TOLERANCE = 1e-12


def _check_flip(nominal_flip_deg: float) -> float:
    flip = _flip_or_none(nominal_flip_deg)
    if flip is None:
        raise ValueError(f"the nominal flip angle must be finite and > 0 degrees, got "
                         f"{nominal_flip_deg!r}")
    return flip


def _positive(*arrays: np.ndarray) -> np.ndarray:
    """True where every array is finite and > 0 (broadcast)."""
    ok = np.ones(np.broadcast_shapes(*(a.shape for a in arrays)), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a) & (a > 0)
    return ok


def _angle_fraction(cos_alpha: np.ndarray, ok: np.ndarray, flip_deg: float) -> np.ndarray:
    """``arccos(cos_alpha) / flip`` where ``ok`` and ``|cos_alpha| <= 1`` (+ rounding), else 0."""
    ok = ok & np.isfinite(cos_alpha) & (np.abs(cos_alpha) <= 1.0 + _COS_TOLERANCE)
    alpha = np.arccos(np.clip(np.where(ok, cos_alpha, 1.0), -1.0, 1.0))
    return np.where(ok, alpha / np.deg2rad(flip_deg), 0.0)


def b1_from_tfl(famp: ArrayLike, nominal_flip_deg: float) -> np.ndarray:
    """B1+ from a Siemens tfl_b1map flip-angle image (Chung et al., MRM 64:439, 2010).

    ``famp`` is 10 × the achieved flip of the preparation pulse in degrees, so
    ``B1 = famp / (10 · FlipAngle)``.

    Parameters
    ----------
    famp : array_like
        The famp image (10 × degrees).
    nominal_flip_deg : float
        Nominal flip of the preparation pulse (sidecar ``FlipAngle``, degrees).

    Returns
    -------
    ndarray of float64
        Fraction of nominal, shape of ``famp``; 0 where famp is ≤ 0 or non-finite.
    """
    flip = _check_flip(nominal_flip_deg)
    famp = np.asarray(famp, dtype=np.float64)
    ok = np.isfinite(famp) & (famp > 0)
    return np.where(ok, famp, 0.0) / (10.0 * flip)


def b1_from_afi(s_tr1: ArrayLike, s_tr2: ArrayLike, tr1_s: float, tr2_s: float,
                nominal_flip_deg: float) -> np.ndarray:
    """B1+ from actual flip-angle imaging (Yarnykh, MRM 57:192, 2007).

    ``r = S2/S1``, ``n = TR2/TR1``, ``cos alpha = (r n - 1)/(n - r)``, ``B1 = alpha /
    FlipAngle``. The relation is first order in TR/T1; against the ideal-spoiling steady
    state (:func:`afi_signals`) it underestimates B1 by
    ``n (1 - cos alpha)² TR1 / (2 (n + 1) T1 alpha sin alpha)`` to first order (0.57 % at
    TR 20/100 ms, T1 0.8 s, alpha 84°).

    Parameters
    ----------
    s_tr1, s_tr2 : array_like
        Magnitudes after the short (TR1) and the long (TR2) interval; broadcast together.
    tr1_s, tr2_s : float
        The two repetition times, seconds, ``0 < TR1 < TR2``.
    nominal_flip_deg : float
        Nominal flip angle, degrees.

    Returns
    -------
    ndarray of float64
        Fraction of nominal; 0 where a signal is ≤ 0 or non-finite or ``r`` is outside the
        model (``r > 1``: cos alpha > 1; ``alpha = 0`` at ``r = 1`` also gives 0).

    Raises
    ------
    ValueError
        Not ``0 < TR1 < TR2``, or an invalid nominal flip.
    """
    flip = _check_flip(nominal_flip_deg)
    tr1, tr2 = float(tr1_s), float(tr2_s)
    if not (math.isfinite(tr1) and math.isfinite(tr2) and 0 < tr1 < tr2):
        raise ValueError(f"AFI needs 0 < TR1 < TR2 (got TR1 {tr1_s!r} s, TR2 {tr2_s!r} s)")
    n = tr2 / tr1
    s1 = np.asarray(s_tr1, dtype=np.float64)
    s2 = np.asarray(s_tr2, dtype=np.float64)
    ok = _positive(s1, s2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = np.where(ok, s2, 0.0) / np.where(ok, s1, 1.0)
        ok &= np.isfinite(r) & (r < n)  # r >= n: the denominator n - r is not positive
        cos_alpha = (r * n - 1.0) / np.where(ok, n - r, 1.0)
    return _angle_fraction(cos_alpha, ok, flip)


def b1_from_dam(s_alpha: ArrayLike, s_2alpha: ArrayLike, nominal_flip_deg: float) -> np.ndarray:
    """B1+ from the double-angle method (Insko & Bolinger, JMR A 103:82, 1993).

    ``alpha = arccos(S2α / (2 Sα))``, ``B1 = alpha / FlipAngle``. Exact for fully relaxed
    magnitudes (TR ≫ T1) with ``B1 · FlipAngle < 90°`` (beyond, magnitudes alias to
    ``180° - alpha``). With TR not ≫ T1 the ``2 alpha`` image is less saturated and B1 is
    overestimated, by ``E cos alpha (1 - cos alpha)(1 + 2 cos alpha) / (alpha sin alpha)``
    to first order in ``E = exp(-TR/T1)`` (at most 1.5 E).

    Parameters
    ----------
    s_alpha, s_2alpha : array_like
        Magnitudes at the nominal flip and at twice it; broadcast together.
    nominal_flip_deg : float
        The smaller FlipAngle, degrees.

    Returns
    -------
    ndarray of float64
        Fraction of nominal; 0 where a signal is ≤ 0 or non-finite, or ``S2α > 2 Sα``.
    """
    flip = _check_flip(nominal_flip_deg)
    sa = np.asarray(s_alpha, dtype=np.float64)
    s2a = np.asarray(s_2alpha, dtype=np.float64)
    ok = _positive(sa, s2a)
    with np.errstate(over="ignore", invalid="ignore"):
        cos_alpha = np.where(ok, s2a, 1.0) / (2.0 * np.where(ok, sa, 1.0))
    return _angle_fraction(cos_alpha, ok, flip)


def afi_signals(t1_s: ArrayLike, b1: ArrayLike, nominal_flip_deg: float, tr1_s: float,
                tr2_s: float, m0: ArrayLike = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state AFI signals with ideal spoiling (Yarnykh 2007, Eq. 2).

    ``S1 = M0 sin a (1 - E2 + (1 - E1) E2 cos a) / (1 - E1 E2 cos² a)``, ``S2`` with 1 ↔ 2,
    ``Ek = exp(-TRk/T1)``, ``a = b1 · FlipAngle``.

    Parameters
    ----------
    t1_s : array_like
        T1, seconds (0 gives E = 0: the signal of an infinite R1).
    b1 : array_like
        B1+ fraction of nominal.
    nominal_flip_deg : float
        Nominal flip angle, degrees.
    tr1_s, tr2_s : float
        Repetition times, seconds.
    m0 : array_like, optional
        Equilibrium magnetisation (signal scale).

    Returns
    -------
    s1, s2 : ndarray of float64
        Signals after TR1 and TR2, broadcast shape of the inputs.
    """
    t1 = np.asarray(t1_s, dtype=np.float64)
    a = np.asarray(b1, dtype=np.float64) * np.deg2rad(nominal_flip_deg)
    with np.errstate(divide="ignore"):  # T1 = 0 (no tissue): E = 0, the signal of R1 = inf
        e1, e2 = np.exp(-tr1_s / t1), np.exp(-tr2_s / t1)
    cos_a, sin_a = np.cos(a), np.sin(a)
    denom = 1.0 - e1 * e2 * cos_a**2
    m0 = np.asarray(m0, dtype=np.float64)
    s1 = m0 * sin_a * (1.0 - e2 + (1.0 - e1) * e2 * cos_a) / denom
    s2 = m0 * sin_a * (1.0 - e1 + (1.0 - e2) * e1 * cos_a) / denom
    return s1, s2


def dam_signals(b1: ArrayLike, nominal_flip_deg: float, m0: ArrayLike = 1.0,
                t1_s: ArrayLike | None = None,
                tr_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Double-angle signals at ``alpha`` and ``2 alpha`` (``alpha = b1 · FlipAngle``).

    Parameters
    ----------
    b1 : array_like
        B1+ fraction of nominal.
    nominal_flip_deg : float
        The smaller nominal flip angle, degrees.
    m0 : array_like, optional
        Equilibrium magnetisation.
    t1_s : array_like, optional
        T1, seconds; needed with ``tr_s``.
    tr_s : float, optional
        Repetition time, seconds. None: fully relaxed ``M0 sin(angle)``; else the spoiled-GRE
        steady state ``M0 sin(angle) (1 - E) / (1 - E cos(angle))``, ``E = exp(-TR/T1)``.

    Returns
    -------
    s_alpha, s_2alpha : ndarray of float64
        Signed signals (take ``abs`` for magnitudes).

    Raises
    ------
    ValueError
        ``tr_s`` without ``t1_s``.
    """
    a = np.asarray(b1, dtype=np.float64) * np.deg2rad(nominal_flip_deg)
    m0 = np.asarray(m0, dtype=np.float64)
    if tr_s is None:
        return m0 * np.sin(a), m0 * np.sin(2 * a)
    if t1_s is None:
        raise ValueError("dam_signals with tr_s needs t1_s (the steady state depends on T1)")
    e1 = np.exp(-float(tr_s) / np.asarray(t1_s, dtype=np.float64))

    def spgr(angle):
        return m0 * np.sin(angle) * (1 - e1) / (1 - e1 * np.cos(angle))

    return spgr(a), spgr(2 * a)
