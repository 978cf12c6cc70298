"""Persistence of the uptake between two timepoints (late / early ratios per lesion)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd


def persistence_table(early: pd.DataFrame, late: pd.DataFrame,
                      columns: Iterable[str] = ("se_percent_mean", "gd_mM_mean",
                                                "mass_mg_per_L_mean")) -> pd.DataFrame:
    """Late/early ratios per lesion (NanoRad's D8/D1 persistence), matched on ``lesion_id``.

    Parameters
    ----------
    early, late : pandas.DataFrame
        Lesion tables of the two timepoints (same contours, so the same lesion ids).
    columns : iterable of str
        Quantities to compare; those missing from either table are skipped.

    Returns
    -------
    pandas.DataFrame
        ``lesion_id``, ``early_timepoint``, ``late_timepoint``, and per quantity ``<q>_early``,
        ``<q>_late`` and ``<q>_ratio`` (late / early; NaN when early <= 0, where a ratio
        means nothing). When the late table has ``quantification``, it is carried as
        ``late_quantification`` (a ratio of a '<LoQ' concentration is not a measurement).
    """
    keep = [c for c in columns if c in early and c in late]
    merged = early[["lesion_id", "timepoint", *keep]].merge(
        late[["lesion_id", "timepoint", *keep]
             + (["quantification"] if "quantification" in late else [])],
        on="lesion_id", suffixes=("_early", "_late"), validate="one_to_one")
    out = pd.DataFrame({"lesion_id": merged["lesion_id"],
                        "early_timepoint": merged["timepoint_early"],
                        "late_timepoint": merged["timepoint_late"]})
    for column in keep:
        first, last = merged[f"{column}_early"], merged[f"{column}_late"]
        out[f"{column}_early"] = first
        out[f"{column}_late"] = last
        out[f"{column}_ratio"] = np.where(first > 0, last / first.where(first > 0), np.nan)
    if "quantification" in merged:
        out["late_quantification"] = merged["quantification"]
    return out
