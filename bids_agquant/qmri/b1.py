"""B1+ (transmit field) map handling.

BIDS ``TB1map`` files are "RECOMMENDED to be represented as percent multiplicative factors"
but real files come as a fraction, as percent, or (Siemens ``tfl_b1map``) as ten times the
measured flip angle in degrees. Everything downstream in bids-agquant uses a **fraction** of
nominal (``alpha_eff = b1 * alpha_nominal``); :func:`b1_to_fraction` converts and explains
what it decided so that the decision can be logged and recorded in provenance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["b1_to_fraction"]

_PERCENT_UNITS = frozenset({"percent", "%", "pct", "percentage", "percent of nominal"})
_FRACTION_UNITS = frozenset(
    {
        "fraction",
        "ratio",
        "a.u.",
        "a.u",
        "au",
        "arbitrary",
        "arbitrary units",
        "1",
        "unitless",
        "dimensionless",
    }
)

#: Median of the finite positive values above which an unlabelled map is taken as percent.
PERCENT_MEDIAN_THRESHOLD = 5.0

#: Plausible range of the median B1+ fraction in a head at 1.5-7 T; outside it the decision
#: string carries a warning.
PLAUSIBLE_MEDIAN_FRACTION = (0.3, 2.0)


def b1_to_fraction(values: ArrayLike, units: str | None = None) -> tuple[np.ndarray, str]:
    """Return a B1+ map as a fraction of nominal, with a description of the decision.

    Parameters
    ----------
    values : array_like
        The B1+ map as stored (fraction, or percent of nominal).
    units : str, optional
        The sidecar ``"Units"`` value. Case-insensitive. ``"percent"``, ``"%"``, ``"pct"``
        (and ``"percentage"``) mean percent (values are divided by 100); ``"fraction"``,
        ``"ratio"``, ``"a.u."``, ``"1"`` (and a few synonyms such as ``"unitless"``) mean a
        fraction (values are used as they are). Anything else, including ``None``, lets
        the data decide: if the median of the finite, positive values is greater than
        ``PERCENT_MEDIAN_THRESHOLD`` (5) the map is taken as percent, else as a fraction.

    Returns
    -------
    b1_fraction : numpy.ndarray of float64
        Same shape as ``values``. Non-finite values are set to **0**, which
        :func:`bids_agquant.qmri.vfa.fit_vfa_linear` treats as invalid (callers mask them).
    decision : str
        One human-readable sentence for the log / provenance, e.g.
        ``"B1 map taken as percent (sidecar Units='%'); divided by 100; median 0.97"``.
        It contains ``"WARNING"`` when the resulting median fraction is outside
        ``PLAUSIBLE_MEDIAN_FRACTION`` (for instance a Siemens ``tfl_b1map`` stored as
        10 x flip angle in degrees, which must be divided by ``10 * nominal flip`` instead),
        when the declared units contradict the data, or when the map has no finite
        positive value.

    Notes
    -----
    Values ``<= 0`` are kept (they are invalid B1 and are masked by the VFA fit).
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(arr)
    positive = arr[finite & (arr > 0)]
    raw_median = float(np.median(positive)) if positive.size else float("nan")

    norm_units = None if units is None else str(units).strip().lower()
    notes: list[str] = []
    if norm_units in _PERCENT_UNITS:
        is_percent = True
        reason = f"sidecar Units={units!r}"
        if np.isfinite(raw_median) and raw_median <= PERCENT_MEDIAN_THRESHOLD:
            notes.append(
                f"WARNING: the sidecar says percent but the median value is {raw_median:.4g}, "
                "which looks like a fraction; check the sidecar"
            )
    elif norm_units in _FRACTION_UNITS:
        is_percent = False
        reason = f"sidecar Units={units!r}"
        if np.isfinite(raw_median) and raw_median > PERCENT_MEDIAN_THRESHOLD:
            notes.append(
                f"WARNING: the sidecar says fraction but the median value is {raw_median:.4g}, "
                "which looks like percent; check the sidecar"
            )
    else:
        declared = "no Units in the sidecar" if units is None else f"unrecognised Units={units!r}"
        if not positive.size:
            is_percent = False
            reason = f"{declared} and no finite positive value to decide from"
        else:
            is_percent = raw_median > PERCENT_MEDIAN_THRESHOLD
            comparison = ">" if is_percent else "<="
            reason = (
                f"{declared}; median of finite positive values {raw_median:.4g} "
                f"{comparison} {PERCENT_MEDIAN_THRESHOLD:g}"
            )

    out = np.where(finite, arr, 0.0)
    if is_percent:
        out = out / 100.0
    n_nonfinite = int(arr.size - np.count_nonzero(finite))

    if positive.size:
        median_fraction = raw_median / 100.0 if is_percent else raw_median
        lo, hi = PLAUSIBLE_MEDIAN_FRACTION
        if not lo <= median_fraction <= hi:
            notes.append(
                f"WARNING: median B1 fraction {median_fraction:.4g} is outside the plausible "
                f"range {lo:g}-{hi:g} (a Siemens tfl_b1map stores 10 x flip angle in degrees "
                "and must be divided by 10 x the nominal flip angle)"
            )
        summary = f"median fraction {median_fraction:.4g}"
    else:
        summary = "WARNING: no finite positive value, every voxel will be invalid"

    decision = (
        f"B1 map taken as {'percent' if is_percent else 'fraction'} ({reason}); "
        f"{'divided by 100' if is_percent else 'used as is'}; {summary}"
    )
    if n_nonfinite:
        decision += f"; {n_nonfinite} non-finite value(s) set to 0"
    if notes:
        decision += "; " + "; ".join(notes)
    return out, decision
