"""Group-level figures (matplotlib): the ``group_figures/*.svg`` files and the report scatter.

:func:`write_group_figures` writes one standalone SVG per analysis of
:func:`bids_agquant.group.run_group_analyses` that ran (called by the group level,
:mod:`bids_agquant.cli.group`); :func:`se_scatter_figure` draws the inline SVG that the
group report shows when the per-participant SE vs concentration analysis was skipped.

Each figure rebuilds the rows it shows from the selection its analysis recorded, with the
same pure functions of :mod:`bids_agquant.group`, so a figure shows exactly what was
analysed. Figures are drawn on matplotlib's non-interactive canvases without pyplot: no GUI
backend is touched and the caller's backend is left alone; matplotlib is imported on first
use (it is not needed to build a workflow).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..group import analysis_rows, paired_timepoint_rows, participant_info
from ..io import atomic_write_text

#: Folder of the group figures, inside the output folder.
FIGURE_DIR = "group_figures"

#: Figure file of each analysis, in the order the files are listed in ``group_stats.json``.
FIGURE_FILES = {
    "dose_response": "dose_response.svg",
    "se_vs_concentration_per_participant": "se_vs_concentration.svg",
    "size_vs_uptake_lar": "size_vs_uptake_lar.svg",
    "dose_normalised_se": "dose_normalised_se.svg",
    "persistence": "persistence.svg",
    "inference_suspected_placebo_kmeans": "inference_suspected_placebo_kmeans.svg",
}

#: Fixed SVG settings so that reruns give byte-identical figure files. Text is drawn as
#: paths: a standalone file then looks the same whatever fonts the viewer has.
_SVG_RC = {"svg.hashsalt": "bids-agquant", "svg.id": "bids-agquant-figure",
           "svg.fonttype": "path", "font.size": 9}

#: Participants drawn with their own colour and legend entry before colours repeat.
_MAX_LEGEND = 12


def write_group_figures(figure_dir: Path, lesions: pd.DataFrame,
                        participants: pd.DataFrame | None, stats: dict) -> list[Path]:
    """Write one SVG per analysis that ran; remove the figures of analyses that did not.

    Parameters
    ----------
    figure_dir : Path
        Destination folder (``<output_dir>/group_figures``); created when needed.
    lesions : DataFrame
        Stacked lesion tables the analyses ran on
        (:func:`bids_agquant.group.combine_lesion_tables`).
    participants : DataFrame, optional
        ``participants.tsv``, or None when the dataset has none.
    stats : dict
        Output of :func:`bids_agquant.group.run_group_analyses` (its ``"analyses"``).

    Returns
    -------
    list of Path
        The figures written, in :data:`FIGURE_FILES` order (files written atomically; the
        same inputs give byte-identical files).
    """
    from matplotlib import rc_context

    makers = {
        "dose_response": _fig_dose_response,
        "se_vs_concentration_per_participant": _fig_se_vs_concentration,
        "size_vs_uptake_lar": _fig_size_vs_uptake,
        "dose_normalised_se": _fig_dose_normalised,
        "persistence": _fig_persistence,
        "inference_suspected_placebo_kmeans": _fig_kmeans,
    }
    analyses = stats["analyses"]
    written = []
    for key, filename in FIGURE_FILES.items():
        path = Path(figure_dir) / filename
        if analyses[key]["status"] != "ok":
            path.unlink(missing_ok=True)  # a stale figure would contradict group_stats.json
            continue
        with rc_context(_SVG_RC):
            fig = makers[key](analyses[key], lesions, participants)
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        atomic_write_text(path, buffer.getvalue())
        written.append(path)
    return written


def se_scatter_figure(result: dict, lesions: pd.DataFrame, participants: pd.DataFrame | None,
                      prefix: str):
    """SE vs concentration of the lesions a skipped per-participant analysis would have used.

    One colour per participant and no fit: the data are shown even when too few lesions per
    participant make a regression meaningless.

    Parameters
    ----------
    result : dict
        The ``se_vs_concentration_per_participant`` record of ``group_stats.json`` (its
        ``parameters`` and ``selection`` choose the rows; missing keys take the defaults).
    lesions : DataFrame
        ``group_lesions.tsv``.
    participants : DataFrame, optional
        ``participants.tsv``.
    prefix : str
        Prefix of the SVG ids, unique within the page.

    Returns
    -------
    markupsafe.Markup or None
        Inline SVG (report style, :data:`bids_agquant.reports.core.RC`), or None when no
        row has both values.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from .core import RC, svg_markup

    p = result.get("parameters", {})
    x_col = p.get("concentration_column", "mass_mg_per_L_mean")
    y_col = p.get("se_column", "se_percent_mean")
    rows = _rows(result, lesions, participants)
    if p.get("treated_only", True) and "arm" in rows:
        rows = rows[rows["arm"] != "placebo"]
    if rows.empty or x_col not in rows or y_col not in rows:
        return None
    # Not _figure: this one is inlined in the report page, in the report's style (RC: text
    # stays text), on a white background, with the legend in a fixed margin on the right.
    with rc_context(RC):
        fig = Figure(figsize=(5.5, 3.6), facecolor="white")
        ax = fig.add_axes([0.13, 0.14, 0.6, 0.74])
        for i, (pid, part) in enumerate(rows.groupby("participant_id", sort=True)):
            ax.scatter(part[x_col], part[y_col], s=14, color=f"C{i % 10}", label=str(pid))
        ax.set_xlabel(f"lesion mean concentration ({p.get('concentration_units', 'mg/L')})")
        ax.set_ylabel("lesion mean SE (%)")
        ax.set_title("SE vs concentration per participant (no fit: "
                     f"{result.get('reason', 'skipped')})", fontsize=7)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return svg_markup(fig, prefix)


# --------------------------------------------------------------------------- helpers


def _figure(ncols: int = 1, width: float = 5.0):
    """A pyplot-free figure of ``ncols`` panels side by side, each ``width`` × 4 inches."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.0), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _rows(result: dict, lesions: pd.DataFrame, participants: pd.DataFrame | None) -> pd.DataFrame:
    """The rows an analysis used, rebuilt from the selection it recorded."""
    sel = result.get("selection", {})
    method = sel.get("t1_method")
    # "per participant: ..." records that each participant's own method was chosen; passing
    # None makes analysis_rows choose it the same way again.
    if method is not None and str(method).startswith("per participant"):
        method = None
    return analysis_rows(lesions, participants, sel.get("timepoint", "early"), method,
                         sel.get("measurable_only") is True)[0]


def _fit_text(fit: dict, label: str) -> str:
    return (f"{label}: y = {fit['slope']:.3g} x + {fit['intercept']:.3g}, "
            f"R² = {fit['r_squared']:.2f}, N = {fit['n']}")


# --------------------------------------------------------------------------- one per analysis


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
