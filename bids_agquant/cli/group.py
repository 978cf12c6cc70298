"""Group level (MRIQC-style, plain Python): gather participant tables, write group outputs.

Outputs in ``output_dir`` (all written atomically; the same inputs give byte-identical files):

* ``group_lesions.tsv`` — every participant's lesion rows, stacked;
* ``group_participants.tsv`` — per participant × timepoint × T1 method summaries;
* ``group_stats.json`` — every analysis of :func:`bids_agquant.group.run_group_analyses`
  with its parameters, selection and N, or the reason it was skipped;
* ``group_figures/*.svg`` — one figure per analysis that ran.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..bids import atomic_write_text
from ..group import (
    DEFAULT_PERSISTENCE_TIMEPOINTS,
    DEFAULT_SIZE_EDGES_MM,
    analysis_rows,
    combine_lesion_tables,
    paired_timepoint_rows,
    participant_info,
    participant_summary,
    run_group_analyses,
)

FIGURE_DIR = "group_figures"

#: Fixed SVG settings so that reruns give byte-identical figures.
_SVG_RC = {"svg.hashsalt": "bids-agquant", "svg.id": "bids-agquant-figure",
           "svg.fonttype": "path", "font.size": 9}

#: Participants drawn with their own colour and legend entry before colours repeat.
_MAX_LEGEND = 12


def read_lesion_tables(output_dir: Path, participant_label=None) -> pd.DataFrame:
    """Stack the ``sub-*/**/anat/*_lesions.tsv`` tables of ``output_dir`` (sorted, stable)."""
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
                        reference_dose_mg_per_kg: float = 100.0,
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


# --------------------------------------------------------------------------- figures


def write_group_figures(figure_dir: Path, lesions: pd.DataFrame,
                        participants: pd.DataFrame | None, stats: dict) -> list[Path]:
    """One SVG per analysis that ran; figures of analyses skipped this time are removed."""
    # Figure objects are drawn by matplotlib's non-interactive canvases (Agg family, SVG
    # writer) without pyplot, so no GUI backend is touched and the caller's is left alone.
    from matplotlib import rc_context

    analyses = stats["analyses"]
    makers = {
        "dose_response.svg": (_fig_dose_response, "dose_response"),
        "se_vs_concentration.svg": (_fig_se_vs_concentration,
                                    "se_vs_concentration_per_participant"),
        "size_vs_uptake_lar.svg": (_fig_size_vs_uptake, "size_vs_uptake_lar"),
        "dose_normalised_se.svg": (_fig_dose_normalised, "dose_normalised_se"),
        "persistence.svg": (_fig_persistence, "persistence"),
        "inference_suspected_placebo_kmeans.svg": (_fig_kmeans,
                                                   "inference_suspected_placebo_kmeans"),
    }
    written = []
    for filename, (maker, key) in makers.items():
        path = figure_dir / filename
        if analyses[key]["status"] != "ok":
            path.unlink(missing_ok=True)  # a stale figure would contradict group_stats.json
            continue
        with rc_context(_SVG_RC):
            fig = maker(analyses[key], lesions, participants)
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        atomic_write_text(path, buffer.getvalue())
        written.append(path)
    return written


def _figure(ncols: int = 1, width: float = 5.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _rows(result: dict, lesions: pd.DataFrame, participants: pd.DataFrame | None) -> pd.DataFrame:
    """The rows an analysis used, rebuilt from the selection it recorded."""
    sel = result["selection"]
    method = sel["t1_method"] if not str(sel["t1_method"]).startswith("per participant") else None
    measurable = sel["measurable_only"] is True
    return analysis_rows(lesions, participants, sel["timepoint"], method, measurable)[0]


def _fit_text(fit: dict, label: str) -> str:
    return (f"{label}: y = {fit['slope']:.3g} x + {fit['intercept']:.3g}, "
            f"R² = {fit['r_squared']:.2f}, N = {fit['n']}")


def _fig_dose_response(result, lesions, participants):
    p = result["parameters"]
    rows = _rows(result, lesions, participants)
    rows = rows[(rows["arm"] == "treated") & (rows["dose_mg_per_kg"] > 0)]
    fig, ax = _figure()
    ax.scatter(rows["dose_mg_per_kg"], rows[p["value_column"]], s=10, alpha=0.4, color="0.5",
               label="lesions")
    groups = result["groups"]
    doses = np.array([g["dose_mg_per_kg"] for g in groups])
    ax.errorbar(doses, [g["mean"] for g in groups], yerr=[g["sd"] for g in groups], fmt="o",
                color="C0", capsize=3, label="dose-group mean ± SD (lesion-weighted)")
    fit = result["fit"]
    line = np.array([0.0, doses.max()])
    ax.plot(line, fit["slope"] * line + fit["intercept"], color="C0",
            label=_fit_text(fit, "OLS on group means"))
    ax.set_xlabel("dose (mg/kg)")
    ax.set_ylabel(f"{p['value_column']} ({p['value_units']})")
    ax.set_title("Dose response")
    ax.legend(fontsize=7)
    return fig


def _fig_se_vs_concentration(result, lesions, participants):
    p = result["parameters"]
    rows = _rows(result, lesions, participants)
    fig, ax = _figure(width=6.0)
    for i, fit in enumerate(result["fits"]):
        part = rows[rows["participant_id"] == fit["participant_id"]]
        x = part[p["concentration_column"]].to_numpy(dtype=float)
        colour = f"C{i % 10}"
        label = (f"{fit['participant_id']} slope {fit['slope']:.3g}, R² {fit['r_squared']:.2f}"
                 if i < _MAX_LEGEND else None)
        ax.scatter(x, part[p["se_column"]], s=10, color=colour, label=label)
        xs = np.array([np.nanmin(x), np.nanmax(x)])
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], color=colour, lw=1)
    ax.set_xlabel(f"lesion mean concentration ({p['concentration_units']})")
    ax.set_ylabel("lesion mean SE (%)")
    ax.set_title(f"SE vs concentration, per participant ({len(result['fits'])} fits)")
    ax.legend(fontsize=6)
    return fig


def _fig_size_vs_uptake(result, lesions, participants):
    p = result["parameters"]
    rows = _rows(result, lesions, participants)
    fig, ax = _figure()
    for arm, colour in (("treated", "C3"), ("placebo", "C0")):
        part = rows[rows["arm"] == arm]
        ax.scatter(part[p["size_column"]], part[p["uptake_column"]], s=10, color=colour,
                   alpha=0.6, label=f"{arm} lesions")
        if result[arm]["status"] == "ok":
            xs = np.array([part[p["size_column"]].min(), part[p["size_column"]].max()])
            for fit_name, style in (("lar", "-"), ("ols", ":")):
                fit = result[arm][fit_name]
                ax.plot(xs, fit["slope"] * xs + fit["intercept"], style, color=colour,
                        label=_fit_text(fit, f"{arm} {fit_name.upper()}"))
    ax.axhline(0.0, color="0.7", lw=0.5)
    ax.set_xlabel("equivalent-sphere diameter (mm)")
    ax.set_ylabel(f"lesion mean concentration ({p['uptake_units']})")
    ax.set_title("Size vs uptake (robust LAR fit)")
    ax.legend(fontsize=6)
    return fig


def _fig_dose_normalised(result, lesions, participants):
    fig, axes = _figure(ncols=2, width=4.0)
    ref = result["parameters"]["reference_dose_mg_per_kg"]
    fig.suptitle(f"Dose-normalised SE (treated lesions, reference {ref:g} mg/kg), mean ± SD")
    for ax, key, title in ((axes[0], "by_primary_tumor", "by primary tumour"),
                           (axes[1], "by_size_class", "by longest diameter")):
        ax.set_title(title)
        part = result[key]
        if part["status"] != "ok":
            ax.text(0.5, 0.5, f"skipped: {part['reason']}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=7, wrap=True)
            continue
        groups = part["groups"]
        pos = np.arange(len(groups))
        ax.bar(pos, [g["mean"] for g in groups], yerr=np.nan_to_num([g["sd"] for g in groups]),
               capsize=3, color="C2")
        ax.set_xticks(pos, [f"{g['group']}\n(n={g['n']})" for g in groups], fontsize=7)
        ax.set_ylabel(f"SE normalised to {ref:g} mg/kg (%)")
    return fig


def _fig_persistence(result, lesions, participants):
    p = result["parameters"]
    paired = paired_timepoint_rows(lesions, p["early_timepoint"], p["late_timepoint"],
                                   None, result["selection"]["measurable_only"] is True)[0]
    if p["treated_only"] and participants is not None:
        info = participant_info(participants)
        arms = dict(zip(info["participant_id"], info["arm"], strict=True))
        paired = paired[[arms.get(pid, "unknown") != "placebo" for pid in paired["participant_id"]]]
    fig, axes = _figure(ncols=2, width=4.0)
    for ax, quantity, column in ((axes[0], "se", p["se_column"]),
                                 (axes[1], "concentration", p["concentration_column"])):
        ax.set_title(f"{quantity}: {p['late_timepoint']} vs {p['early_timepoint']}")
        if result[quantity]["status"] != "ok":
            ax.text(0.5, 0.5, f"skipped: {result[quantity]['reason']}", ha="center",
                    va="center", transform=ax.transAxes, fontsize=7)
            continue
        early = paired[f"{column}_early"].to_numpy(dtype=float)
        late = paired[f"{column}_late"].to_numpy(dtype=float)
        ax.scatter(early, late, s=10, color="C4", alpha=0.6, label="lesions")
        ratio = result[quantity]["lesion_ratio"]["median"]
        if math.isfinite(ratio):
            xs = np.array([0.0, np.nanmax(early)])
            ax.plot(xs, ratio * xs, color="C4", label=f"median lesion ratio {ratio:.2f}")
        ax.set_xlabel(f"{column} at {p['early_timepoint']}")
        ax.set_ylabel(f"{column} at {p['late_timepoint']}")
        ax.legend(fontsize=7)
    return fig


def _fig_kmeans(result, lesions, participants):
    fig, ax = _figure()
    entries = result["participants"]
    uptake = np.array([e["uptake_mean_of_lesions"] for e in entries])
    two_d = "entropy" in result["features_used"]
    y = (np.array([e["entropy_mean_of_lesions"] for e in entries]) if two_d
         else np.arange(len(entries)))
    for label, colour, marker in (("suspected placebo", "C0", "o"),
                                  ("suspected agent", "C3", "^")):
        sel = np.array([e["label"] == label for e in entries])
        ax.scatter(uptake[sel], y[sel], color=colour, marker=marker, label=label)
    ax.set_xlabel(f"mean lesion uptake ({result['parameters']['uptake_units']})")
    ax.set_ylabel("mean lesion entropy (bit)" if two_d else "participant (sorted id)")
    ax.set_title("INFERENCE: suspected placebo (k-means, k = 2)")
    ax.legend(fontsize=7)
    return fig
