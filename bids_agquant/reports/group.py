"""The group report ``group.html``: the group tables, every analysis of ``group_stats.json``
(its figure from ``group_figures/``, inlined, its key numbers, and the full record), and
links to the participant reports. Written after the group level, from what it wrote."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

from ..io import atomic_write_text
from .core import clean_svg, fmt, package_versions, read_json, read_tsv, read_tsv_text, render
from .group_figures import FIGURE_DIR, FIGURE_FILES, se_scatter_figure

LOGGER = logging.getLogger("bids_agquant")

#: Analyses in report order: key in group_stats.json, title, figure file (in FIGURE_DIR).
ANALYSES = tuple((key, title, FIGURE_FILES[key]) for key, title in (
    ("dose_response", "Dose–response"),
    ("se_vs_concentration_per_participant", "SE vs concentration, per participant"),
    ("size_vs_uptake_lar", "Lesion size vs uptake (robust LAR fit)"),
    ("inference_suspected_placebo_kmeans", "Blinded classification (k-means, k = 2)"),
    ("persistence", "Persistence (late / early)"),
    ("dose_normalised_se", "Dose-normalised SE"),
))

PARTICIPANT_COLUMNS = (
    ("participant_id", "participant", ""), ("timepoint", "timepoint", ""),
    ("t1_method", "T1 method", ""), ("agent", "agent", ""), ("dose_mg_per_kg", "dose", "mg/kg"),
    ("weight_kg", "weight", "kg"), ("primary_tumor", "primary", ""),
    ("hours_post_injection", "hours p.i.", "h"), ("n_lesions", "lesions", ""),
    ("n_measurable", "measurable", ""), ("n_lesions_below_loq", "<LoQ", ""),
    ("gd_mM_mean_of_lesion_means", "Gd, mean of lesion means", "mM"),
    ("mass_mg_per_L_mean_of_lesion_means", "agent, mean of lesion means", "mg/L"),
    ("mass_mg_per_L_mean_of_lesion_p75", "agent, mean of lesion p75", "mg/L"),
    ("se_percent_mean_of_lesion_means", "SE, mean of lesion means", "%"),
    ("percent_injected_dose_per_g_mean_of_lesions", "%ID/g", "%/g"),
)
LESION_COLUMNS = (
    ("participant_id", "participant", ""), ("timepoint", "timepoint", ""),
    ("t1_method", "T1 method", ""), ("lesion_id", "lesion", ""), ("lesion_name", "name", ""),
    ("volume_ml", "volume", "mL"), ("equiv_diameter_mm", "equiv. diam.", "mm"),
    ("longest_diameter_mm", "longest diam.", "mm"), ("measurable", "measurable", ""),
    ("gd_mM_mean", "Gd mean", "mM"), ("mass_mg_per_L_mean", "agent mean", "mg/L"),
    ("se_percent_mean", "SE mean", "%"), ("negative_fraction", "negative fraction", ""),
    ("quantification", "quantification", ""),
)


def _table(path: Path, columns) -> dict | None:
    text, numbers = read_tsv_text(path), read_tsv(path)
    if text is None or numbers is None:
        return None
    shown = [(c, h, u) for c, h, u in columns if c in text.columns]
    rows = []
    for i in range(len(text)):
        cells = [{"column": c, "raw": text.iloc[i][c],
                  "text": "n/a" if text.iloc[i][c] in ("n/a", "") else fmt(numbers.iloc[i][c])}
                 for c, _, _ in shown]
        below = ("quantification" in text and text.iloc[i]["quantification"] == "<LoQ") or (
            "n_lesions_below_loq" in text and text.iloc[i]["n_lesions_below_loq"] not in
            ("0", "n/a", ""))
        rows.append({"cells": cells, "class": "below-loq" if below else ""})
    return {"head": [{"column": c, "header": h, "unit": u} for c, h, u in shown],
            "rows": rows, "file": path.name}


def _fit(fit: dict | None, units: str = "") -> str:
    if not fit:
        return "n/a"
    return (f"slope {fmt(fit.get('slope'))}{(' ' + units) if units else ''}, intercept "
            f"{fmt(fit.get('intercept'))}, R² {fmt(fit.get('r_squared'), 3)}, "
            f"N {fmt(fit.get('n'))}")


def headline(key: str, result: dict) -> list[tuple[str, str]]:
    """The key numbers of one analysis, as (label, text) pairs."""
    if result.get("status") != "ok":
        return [("skipped", str(result.get("reason", "no reason recorded")))]
    p = result.get("parameters", {})
    sel = result.get("selection", {})
    out = [("selection", f"timepoint {sel.get('timepoint', 'n/a')}, T1 method "
                         f"{sel.get('t1_method', 'n/a')}, measurable only "
                         f"{fmt(sel.get('measurable_only'))}")]
    if key == "dose_response":
        out.append((f"{p.get('value_column')} vs dose", _fit(result.get("fit"))))
        for g in result.get("groups", []):
            out.append((f"{fmt(g.get('dose_mg_per_kg'))} mg/kg",
                        f"mean {fmt(g.get('mean'))} ± {fmt(g.get('sd'))} {p.get('value_units', '')}"
                        f" ({fmt(g.get('n_lesions'))} lesions, "
                        f"{fmt(g.get('n_participants'))} participants)"))
    elif key == "se_vs_concentration_per_participant":
        for f in result.get("fits", []):
            out.append((str(f.get("participant_id")), _fit(f, p.get("slope_units", ""))))
    elif key == "size_vs_uptake_lar":
        for arm in ("treated", "placebo"):
            part = result.get(arm, {})
            out.append((f"{arm}, LAR", _fit(part.get("lar")) if part.get("status") == "ok"
                        else f"skipped: {part.get('reason', 'n/a')}"))
    elif key == "inference_suspected_placebo_kmeans":
        out.append(("caveat", str(result.get("caveat", ""))))
        for e in result.get("participants", []):
            out.append((str(e.get("participant_id")),
                        f"{e.get('label')} (uptake {fmt(e.get('uptake_mean_of_lesions'))} "
                        f"{p.get('uptake_units', '')}, entropy "
                        f"{fmt(e.get('entropy_mean_of_lesions'))} bit)"))
    elif key == "persistence":
        for quantity in ("se", "concentration"):
            part = result.get(quantity, {})
            ratio = part.get("lesion_ratio", {})
            out.append((f"{quantity} {p.get('late_timepoint')}/{p.get('early_timepoint')}",
                        f"median lesion ratio {fmt(ratio.get('median'), 3)} (mean "
                        f"{fmt(ratio.get('mean'), 3)} ± {fmt(ratio.get('sd'), 3)}, N "
                        f"{fmt(ratio.get('n'))})" if part.get("status") == "ok"
                        else f"skipped: {part.get('reason', 'n/a')}"))
    elif key == "dose_normalised_se":
        every = result.get("all", {})
        out.append(("all treated lesions", f"{fmt(every.get('mean'))} ± {fmt(every.get('sd'))} "
                                           f"% (N {fmt(every.get('n'))})"))
    return out


def se_scatter_svg(output_dir: Path, bids_dir: Path | None, result: dict, prefix: str):
    """SE vs concentration of the lesions a skipped per-participant analysis would have used.

    Reads ``group_lesions.tsv`` and ``participants.tsv`` and draws them with
    :func:`bids_agquant.reports.group_figures.se_scatter_figure` (no fit: the data are shown
    even when too few lesions per participant make a regression meaningless).

    Parameters
    ----------
    output_dir : Path
        The derivatives dataset after the group level.
    bids_dir : Path, optional
        The raw dataset (its ``participants.tsv`` gives the arms).
    result : dict
        The ``se_vs_concentration_per_participant`` record of ``group_stats.json``.
    prefix : str
        Prefix of the SVG ids, unique within the page.

    Returns
    -------
    markupsafe.Markup or None
        Inline SVG, or None when there are no lesion rows to show.
    """
    lesions = read_tsv(output_dir / "group_lesions.tsv")
    participants = read_tsv(Path(bids_dir) / "participants.tsv") if bids_dir else None
    if lesions is None or lesions.empty:
        return None
    return se_scatter_figure(result, lesions, participants, prefix)


def write_group_report(output_dir: Path, *, bids_dir: Path | None = None) -> Path:
    """Write ``output_dir/group.html`` from the group-level outputs.

    Parameters
    ----------
    output_dir : Path
        The derivatives dataset after the group level (``group_*.tsv``,
        ``group_stats.json``, ``group_figures/*.svg``); missing pieces are shown as missing.
    bids_dir : Path, optional
        The raw dataset (only for its name in the header).

    Returns
    -------
    Path
        The report (written atomically).
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    stats = read_json(output_dir / "group_stats.json")
    problems = []
    if stats is None:
        problems.append("group_stats.json is missing or unreadable: run the group level")
        stats = {}
    analyses = []
    for index, (key, title, figure) in enumerate(ANALYSES):
        result = (stats.get("analyses") or {}).get(key)
        if result is None:
            problems.append(f"analysis {key} not in group_stats.json")
            continue
        svg = None
        path = output_dir / FIGURE_DIR / figure
        if result.get("status") == "ok":
            try:
                svg = clean_svg(path.read_text(), f"g{index}")
            except (OSError, ValueError) as exc:
                problems.append(f"{path.name}: {exc}")
        elif key == "se_vs_concentration_per_participant":
            try:
                svg = se_scatter_svg(output_dir, bids_dir, result, f"g{index}")
            except Exception as exc:  # noqa: BLE001 - a figure never stops the report
                problems.append(f"SE vs concentration scatter: {exc}")
        analyses.append({"key": key, "title": title, "status": result.get("status", "n/a"),
                         "headline": headline(key, result), "svg": svg,
                         "figure": (f"{FIGURE_DIR}/{figure}" if result.get("status") == "ok"
                                    else "drawn for this report from group_lesions.tsv"),
                         "record": json.dumps(result, indent=1, ensure_ascii=False)})
    participants = sorted(p.name for p in output_dir.glob("sub-*") if p.is_dir())
    dataset = read_json(Path(bids_dir) / "dataset_description.json") if bids_dir else None
    context = {
        "versions": package_versions(),
        "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "dataset": (dataset or {}).get("Name", str(bids_dir) if bids_dir else "n/a"),
        "inputs": stats.get("inputs", {}), "parameters": stats.get("parameters", {}),
        "generated_by": stats.get("GeneratedBy", {}),
        "analyses": analyses, "problems": problems,
        "participants": [{"id": p, "report": f"{p}.html",
                          "has_report": (output_dir / f"{p}.html").exists()}
                         for p in participants],
        "participants_table": _table(output_dir / "group_participants.tsv",
                                     PARTICIPANT_COLUMNS),
        "lesions_table": _table(output_dir / "group_lesions.tsv", LESION_COLUMNS),
    }
    for name, table in (("group_participants.tsv", context["participants_table"]),
                        ("group_lesions.tsv", context["lesions_table"])):
        if table is None:
            problems.append(f"{name} is missing or unreadable")
    html = render("group.html.j2", **context)
    path = output_dir / "group.html"
    atomic_write_text(path, html)
    LOGGER.info("wrote %s (%.1f s)", path, time.perf_counter() - start)
    return path
