"""Group-level analyses: pure functions on the participants' lesion tables (pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def combine_lesion_tables(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack per-participant lesion tables into one, with a leading ``participant_id``.

    Parameters
    ----------
    tables : dict
        ``participant_id`` (``sub-<label>``) → that participant's lesion rows (any number of
        timepoints).
    """
    frames = []
    for participant_id, table in sorted(tables.items()):
        frame = table.copy()
        frame.insert(0, "participant_id", participant_id)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["participant_id", "timepoint", "lesion_id"])
    return pd.concat(frames, ignore_index=True, sort=False)


def participant_summary(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                        ) -> pd.DataFrame:
    """One row per participant, timepoint (and T1 method): mean of lesion means and mean p75.

    Parameters
    ----------
    lesions : DataFrame
        Output of :func:`combine_lesion_tables` (needs ``gd_mM_mean`` and ``gd_mM_p75``).
    participants : DataFrame, optional
        ``participants.tsv`` (agent, dose_mg_per_kg, weight_kg, primary_tumor are carried over).
    """
    if lesions.empty:
        return pd.DataFrame(columns=["participant_id", "timepoint", "n_lesions"])
    keys = ["participant_id", "timepoint"] + (["t1_method"] if "t1_method" in lesions else [])
    grouped = lesions.groupby(keys, sort=True)
    summary = grouped.agg(
        n_lesions=("lesion_id", "size"),
        gd_mM_mean_of_lesion_means=("gd_mM_mean", "mean"),
        gd_mM_mean_of_lesion_p75=("gd_mM_p75", "mean"),
    ).reset_index()
    if "measurable" in lesions:
        measurable = lesions[lesions["measurable"].astype(str).str.lower() == "true"]
        means = measurable.groupby(keys)["gd_mM_mean"].mean()
        summary["gd_mM_mean_of_measurable_lesion_means"] = [
            means.get(tuple(row), np.nan) for row in summary[keys].itertuples(index=False)]
    if participants is not None and "participant_id" in participants:
        keep = [c for c in ("participant_id", "agent", "dose_mg_per_kg", "weight_kg",
                            "primary_tumor") if c in participants]
        summary = summary.merge(participants[keep], on="participant_id", how="left")
    return summary
