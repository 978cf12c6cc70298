"""Group level (MRIQC-style, plain Python): gather participant tables, write group outputs.

Outputs in ``output_dir`` (all written atomically; the same inputs give byte-identical files):

* ``group_lesions.tsv`` — every participant's lesion rows, stacked;
* ``group_participants.tsv`` — per participant × timepoint × T1 method summaries;
* ``group_stats.json`` — every analysis of :func:`bids_agquant.group.run_group_analyses`
  with its parameters, selection and N, or the reason it was skipped;
* ``group_figures/*.svg`` — one figure per analysis that ran.

This module only gathers the tables, calls the pure analyses of :mod:`bids_agquant.group`
and writes their results; the figures are drawn by :mod:`bids_agquant.reports.group_figures`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..config import DEFAULT_REFERENCE_DOSE_MG_PER_KG
from ..group import (
    DEFAULT_PERSISTENCE_TIMEPOINTS,
    DEFAULT_SIZE_EDGES_MM,
    combine_lesion_tables,
    participant_summary,
    run_group_analyses,
)
from ..io import atomic_write_text
from ..reports.group_figures import FIGURE_DIR, write_group_figures


def read_lesion_tables(output_dir: Path, participant_label=None) -> pd.DataFrame:
    """Stack the ``sub-*/**/anat/*_lesions.tsv`` tables of ``output_dir`` (sorted, stable).

    Parameters
    ----------
    output_dir : Path
        The app's output folder (participant-level results under ``sub-*``).
    participant_label : list of str, optional
        Labels (without ``sub-``) to gather; default all.

    Returns
    -------
    DataFrame
        The lesion rows of every table found, stacked by
        :func:`bids_agquant.group.combine_lesion_tables`.
    """
    tables = {}
    for subject_dir in sorted(Path(output_dir).glob("sub-*")):
        if not subject_dir.is_dir():
            continue
        if participant_label and subject_dir.name.removeprefix("sub-") not in participant_label:
            continue
        files = sorted(subject_dir.glob("**/anat/*_lesions.tsv"))
        if files:
            tables[subject_dir.name] = pd.concat(
                [pd.read_csv(f, sep="\t", na_values=["n/a"]) for f in files], ignore_index=True)
    return combine_lesion_tables(tables)


def write_group_outputs(output_dir: Path, bids_dir: Path, participant_label=None,
                        reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG,
                        persistence_timepoints: Sequence[str] = DEFAULT_PERSISTENCE_TIMEPOINTS,
                        size_edges_mm: Sequence[float] = DEFAULT_SIZE_EDGES_MM) -> list[Path]:
    """Write the group tables, ``group_stats.json`` and figures; idempotent.

    Parameters
    ----------
    output_dir : Path
        The app's output folder (participant-level results under ``sub-*``).
    bids_dir : Path
        Raw dataset; its ``participants.tsv`` (agent, dose, weight, primary tumour) is used
        when present.
    participant_label : list of str, optional
        Labels (without ``sub-``) to gather; default all.
    reference_dose_mg_per_kg : float
        Dose that SE is normalised to (default 100 mg/kg).
    persistence_timepoints : (str, str)
        Early and late timepoint labels of the persistence ratios (default D1, D8).
    size_edges_mm : sequence of float
        Longest-diameter class edges of the dose-normalised SE by size (default 10, 20, 50).

    Returns
    -------
    list of Path
        Every file written.
    """
    output_dir = Path(output_dir)
    lesions = read_lesion_tables(output_dir, participant_label)
    participants_tsv = Path(bids_dir) / "participants.tsv"
    participants = (pd.read_csv(participants_tsv, sep="\t", na_values=["n/a"], dtype={
        "participant_id": str}) if participants_tsv.exists() else None)
    summary = participant_summary(lesions, participants)
    stats = run_group_analyses(lesions, participants, reference_dose_mg_per_kg,
                               persistence_timepoints, size_edges_mm)
    written = []
    for name, frame in (("group_lesions.tsv", lesions), ("group_participants.tsv", summary)):
        path = output_dir / name
        atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a",
                                             float_format="%.6g"))
        written.append(path)
    figures = write_group_figures(output_dir / FIGURE_DIR, lesions, participants, stats)
    written.extend(figures)
    stats = {"GeneratedBy": {"Name": "bids-agquant", "Version": __version__},
             **stats, "figures": [f"{FIGURE_DIR}/{p.name}" for p in figures]}
    path = output_dir / "group_stats.json"
    atomic_write_text(path, json.dumps(_jsonable(stats), indent=2, allow_nan=False) + "\n")
    written.append(path)
    return written


def _jsonable(value):
    """JSON-safe copy: NaN/inf → null, numpy scalars → Python, floats to 10 significant digits
    (enough for every reported number, and free of last-digit noise)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return float(f"{value:.10g}") if math.isfinite(value) else None
    return value
