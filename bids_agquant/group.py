"""Group-level (trial-wide) analyses: pure functions on the participants' lesion tables.

No file I/O here (``bids_agquant.cli.group`` reads the tables and writes the outputs). Every
analysis function returns a JSON-ready ``dict`` with ``"status"`` (``"ok"`` or ``"skipped"``
with a ``"reason"``), the parameters and selection it used, and its results, so that a missing
column or too few participants never raises but is recorded.

Definitions (seeds-facts §1.6, §1.7, §1.9, §2.1, §2.2):

* **Analysis rows.** Unless a timepoint label is given, each participant contributes the lesion
  rows of its *early* post-agent timepoint (smallest ``hours_post_injection``; timepoints whose
  ``ce-`` entity names another substance than the participant's agent, e.g. a ``ce-gadoterate``
  reference scan, are never picked; ties or missing times fall back to the natural order of the
  labels, so ``ses-D1`` < ``ses-D8``). SE does not depend on the T1 method and concentrations are
  per method, so each participant contributes **one** T1 method (the one asked for, else the
  first of :data:`METHOD_PREFERENCE` it has) to avoid counting a lesion twice.
* **Arms.** ``placebo`` when ``dose_mg_per_kg`` is 0 or ``agent`` is one of
  :data:`bids_agquant.config.PLACEBO_NAMES`; ``treated`` when the dose is > 0 or the agent is
  another name; ``unknown`` otherwise (``n/a`` in participants.tsv is *missing*, not placebo).
* **Dose response** (NanoRad): OLS of the per-dose-group mean SE on dose. A group's mean is
  **lesion-weighted** (mean over all its lesions, "mean SE per dose group" in the paper, where
  each figure point is one metastasis); the patient-weighted version (mean of patient means) is
  reported alongside as a sensitivity check.
* **LAR** (NanoBrainMets): least absolute residuals, solved exactly as a linear programme. Its
  R² is defined exactly as for OLS, ``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` with ŷ from the LAR line (so
  it is ≤ the OLS R² on the same data and can be negative).
* **Suspected placebo** (inference, NanoBrainMets): per-participant features standardised to
  z-scores (population SD), k-means with k = 2 from a deterministic farthest-point start, and
  the cluster with the lower mean uptake called "suspected placebo". The true arm is never a
  feature; it is only compared afterwards.
* **Size classes** (NanoRad): longest diameter in ``[10, 20)`` mm and ``[20, 50)`` mm, all other
  diameters in ``other`` (edges configurable, left-closed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, sparse

from .config import DEFAULT_REFERENCE_DOSE_MG_PER_KG, PLACEBO_NAMES, resolve_agent
from .qmri.uptake import dose_normalised, percent_injected_dose_per_g

__all__ = [
    "METHOD_PREFERENCE",
    "analysis_rows",
    "classify_placebo",
    "combine_lesion_tables",
    "concentration_from_se",
    "dose_normalisation_factor",
    "dose_normalised_se",
    "dose_response",
    "equivalent_diameter_mm",
    "kmeans_two",
    "lar_fit",
    "ols_fit",
    "paired_timepoint_rows",
    "participant_info",
    "participant_summary",
    "persistence_ratio",
    "persistence_ratios",
    "run_group_analyses",
    "se_vs_concentration_per_participant",
    "size_class",
    "size_vs_uptake_lar",
]

#: T1 methods in the order one is picked for a participant that has several.
METHOD_PREFERENCE = ("vfa", "mp2rage")

#: Longest-diameter class edges (mm) of the NanoRad size analysis (10–20 mm, 20–50 mm).
DEFAULT_SIZE_EDGES_MM = (10.0, 20.0, 50.0)

#: Timepoint labels of the NanoRad persistence analysis (D8 relative to D1).
DEFAULT_PERSISTENCE_TIMEPOINTS = ("ses-D1", "ses-D8")

KMEANS_CAVEAT = (
    "Unsupervised inference, not a measurement: k-means always returns two clusters, even when "
    "every participant received the agent (or none did). A participant labelled 'suspected "
    "placebo' has low, homogeneous uptake; this does not unblind the trial and must not be used "
    "as the allocation."
)


# --------------------------------------------------------------------------- pure array helpers


def _finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _check_fit_input(x: np.ndarray, name: str) -> None:
    if x.size < 2:
        raise ValueError(f"{name} needs at least 2 finite (x, y) pairs, got {x.size}")
    if np.ptp(x) == 0:
        raise ValueError(f"{name}: x has no spread (all values {x[0]:g})")


def _r_squared(y: np.ndarray, fitted: np.ndarray) -> float:
    """``1 − SS_res / SS_tot``; NaN when y is constant (SS_tot = 0)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0:
        return math.nan
    return 1.0 - float(np.sum((y - fitted) ** 2)) / ss_tot


def ols_fit(x: ArrayLike, y: ArrayLike) -> dict:
    """Ordinary least-squares line ``y = slope · x + intercept``.

    Parameters
    ----------
    x, y : array_like
        Paired values; pairs where either is non-finite are dropped.

    Returns
    -------
    dict
        ``slope`` (y units per x unit), ``intercept`` (y units), ``r_squared``
        (``1 − SS_res/SS_tot``, NaN for constant y) and ``n`` (pairs used).

    Raises
    ------
    ValueError
        Fewer than 2 finite pairs, or x constant.
    """
    x, y = _finite_pairs(x, y)
    _check_fit_input(x, "OLS")
    dx = x - x.mean()
    slope = float(np.dot(dx, y - y.mean()) / np.dot(dx, dx))
    intercept = float(y.mean() - slope * x.mean())
    return {"slope": slope, "intercept": intercept,
            "r_squared": _r_squared(y, slope * x + intercept), "n": int(x.size)}


def lar_fit(x: ArrayLike, y: ArrayLike) -> dict:
    """Least-absolute-residuals (L1) line, solved exactly as a linear programme.

    Minimises ``Σ |y − (slope · x + intercept)|`` with HiGHS (variables: intercept, slope and
    the positive and negative parts of each residual). The optimum passes through at least two
    data points; when several lines share the optimum, HiGHS returns one deterministically.

    Parameters
    ----------
    x, y : array_like
        Paired values; pairs where either is non-finite are dropped.

    Returns
    -------
    dict
        ``slope``, ``intercept``, ``r_squared`` defined as for OLS but with the LAR line's
        residuals, ``1 − Σ(y − ŷ)²/Σ(y − ȳ)²`` (≤ the OLS R²; may be negative),
        ``sum_abs_residuals`` and ``n``.

    Raises
    ------
    ValueError
        Fewer than 2 finite pairs, x constant, or the solver fails.
    """
    x, y = _finite_pairs(x, y)
    _check_fit_input(x, "LAR")
    n = x.size
    # Centre and scale x so the LP is well conditioned whatever the units.
    x0, xs = x.mean(), x.std()
    u = (x - x0) / xs
    eye = sparse.identity(n, format="csr")
    a_eq = sparse.hstack([sparse.csr_matrix(np.column_stack([np.ones(n), u])), eye, -eye],
                         format="csr")
    cost = np.concatenate([[0.0, 0.0], np.ones(2 * n)])
    bounds = [(None, None), (None, None)] + [(0.0, None)] * (2 * n)
    res = optimize.linprog(cost, A_eq=a_eq, b_eq=y, bounds=bounds, method="highs")
    if res.status != 0:
        raise ValueError(f"LAR linear programme failed: {res.message}")
    slope = float(res.x[1] / xs)
    intercept = float(res.x[0] - slope * x0)
    fitted = slope * x + intercept
    return {"slope": slope, "intercept": intercept, "r_squared": _r_squared(y, fitted),
            "sum_abs_residuals": float(np.sum(np.abs(y - fitted))), "n": int(n)}


def equivalent_diameter_mm(volume_ml: ArrayLike) -> np.ndarray:
    """Diameter (mm) of the sphere of the same volume, ``(6V/π)^(1/3)`` with V in mm³.

    Same definition as ``equiv_diameter_mm`` in :func:`bids_agquant.lesions.lesion_geometry`
    (1 mL = 1000 mm³): 0.5236 mL → 10.0 mm, 1 mL → 12.41 mm, 4.189 mL → 20.0 mm.
    """
    return np.cbrt(6.0 * np.asarray(volume_ml, dtype=np.float64) * 1000.0 / np.pi)


def dose_normalisation_factor(
    dose_mg_per_kg: ArrayLike,
    reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG,
) -> np.ndarray:
    """Factor ``reference / dose`` that :func:`~bids_agquant.qmri.uptake.dose_normalised`
    applies (15 mg/kg → 6.667 at 100 mg/kg); NaN for a zero (placebo) or missing dose."""
    return dose_normalised(1.0, dose_mg_per_kg, reference_dose_mg_per_kg)


def persistence_ratio(late: ArrayLike, early: ArrayLike) -> np.ndarray:
    """Late-over-early ratio (e.g. D8/D1 SE); NaN where the early value is not > 0.

    A ratio to a zero or negative early value (noise in a non-enhancing lesion) has no
    meaning as a retained fraction, so it is not reported.
    """
    late = np.asarray(late, dtype=np.float64)
    early = np.asarray(early, dtype=np.float64)
    ok = np.isfinite(early) & (early > 0)
    return np.where(ok, late / np.where(ok, early, 1.0), np.nan)


def concentration_from_se(se_percent: ArrayLike, slope_percent_per_unit: float,
                          intercept_percent: float = 0.0) -> np.ndarray:
    """Concentration implied by an SE through a linear SE-vs-concentration calibration.

    ``C = (SE − intercept) / slope``, in the concentration units of the slope. NanoRad used it
    with the intercept ignored (0) to bound the D8 concentration from the D8 SE and the D1
    per-patient slope (32.4 % / 3.31 %/(mg/L) = 9.8 mg/L ≈ 9.8 µM Gd). Valid only for the
    protocol and range the calibration was fitted on. NaN for a non-positive slope.
    """
    slope = float(slope_percent_per_unit)
    se = np.asarray(se_percent, dtype=np.float64)
    if not np.isfinite(slope) or slope <= 0:
        return np.full(se.shape, np.nan)
    return (se - float(intercept_percent)) / slope


def size_class(longest_diameter_mm: ArrayLike,
               edges_mm: Sequence[float] = DEFAULT_SIZE_EDGES_MM) -> np.ndarray:
    """Size-class label of each diameter: ``"10-20 mm"`` for ``10 <= d < 20`` etc.

    Diameters outside ``[edges[0], edges[-1])`` are ``"other"``; NaN is ``"unknown"``.
    """
    edges = [float(e) for e in edges_mm]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"size class edges must be increasing (>= 2 values), got {edges_mm!r}")
    d = np.asarray(longest_diameter_mm, dtype=np.float64)
    out = np.where(np.isfinite(d), "other", "unknown").astype(object)
    for lo, hi in zip(edges, edges[1:], strict=False):
        out[(d >= lo) & (d < hi)] = f"{lo:g}-{hi:g} mm"
    return out


def kmeans_two(features: ArrayLike, max_iter: int = 100) -> dict:
    """Deterministic k-means with k = 2 (Lloyd iterations, farthest-point start).

    The first centre is the row with the smallest value of the **first** feature (put the
    uptake first: the start is then the lowest-uptake participant), the second centre the row
    farthest from it (Euclidean). Ties go to the earlier row, so the result depends only on
    the data and its row order, never on a random seed.

    Parameters
    ----------
    features : array_like, shape (n, p)
        Finite feature rows (standardise them first if their units differ).
    max_iter : int
        Upper bound on Lloyd iterations (k = 2 converges in a few).

    Returns
    -------
    dict
        ``labels`` (n,) int 0/1, ``centres`` (2, p), ``distances`` (n, 2) to each centre,
        ``n_iter``, ``converged``.

    Raises
    ------
    ValueError
        Fewer than 2 rows, non-finite values, or all rows identical.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"k-means needs at least 2 rows of features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("k-means features must be finite")
    first = int(np.argmin(x[:, 0]))
    dist0 = np.linalg.norm(x - x[first], axis=1)
    second = int(np.argmax(dist0))
    if dist0[second] == 0:
        raise ValueError("k-means: all feature rows are identical")
    centres = x[[first, second]].copy()
    labels = np.full(x.shape[0], -1)
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)
        new = np.argmin(dist, axis=1)  # ties → centre 0
        if np.array_equal(new, labels):
            converged = True
            break
        if np.unique(new).size < 2:  # cannot happen from this start; keep the last partition
            break
        labels = new
        centres = np.stack([x[labels == k].mean(axis=0) for k in (0, 1)])
    distances = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)
    return {"labels": labels, "centres": centres, "distances": distances, "n_iter": n_iter,
            "converged": converged}


# --------------------------------------------------------------------------- table helpers


def combine_lesion_tables(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack per-participant lesion tables into one, with a leading ``participant_id``.

    Parameters
    ----------
    tables : dict
        ``participant_id`` (``sub-<label>``) → that participant's lesion rows (any number of
        timepoints). A ``quantification`` column (``<LoQ`` / ``quantified``) also gives the
        boolean ``gd_below_loq`` the analyses count.
    """
    frames = []
    for participant_id, table in sorted(tables.items()):
        frame = table.drop(columns=["participant_id"], errors="ignore")
        frame.insert(0, "participant_id", participant_id)
        if "quantification" in frame and "gd_below_loq" not in frame:
            frame["gd_below_loq"] = frame["quantification"].astype(str) == "<LoQ"
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["participant_id", "timepoint", "lesion_id"])
    return pd.concat(frames, ignore_index=True, sort=False)


def _truthy(series: pd.Series) -> pd.Series:
    """Boolean view of a column read from TSV (bool, or strings 'true'/'True'/'1')."""
    if series.dtype == bool:
        return series
    return series.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=np.float64)
    return pd.to_numeric(frame[column], errors="coerce").astype(np.float64)


def _arm(agent: object, dose: float) -> str:
    if np.isfinite(dose) and dose == 0:
        return "placebo"
    if isinstance(agent, str) and agent.strip():
        return "placebo" if agent.strip().lower() in PLACEBO_NAMES else "treated"
    if np.isfinite(dose) and dose > 0:
        return "treated"
    return "unknown"


def participant_info(participants: pd.DataFrame | None) -> pd.DataFrame:
    """``participants.tsv`` reduced to the columns used here, plus the derived ``arm``.

    Returns one row per ``participant_id`` with ``agent``, ``dose_mg_per_kg``, ``weight_kg``,
    ``primary_tumor`` (NaN when absent) and ``arm`` (``placebo``/``treated``/``unknown``, see
    the module docstring).
    """
    columns = ["participant_id", "agent", "dose_mg_per_kg", "weight_kg", "primary_tumor"]
    if participants is None or "participant_id" not in participants:
        return pd.DataFrame(columns=[*columns, "arm"])
    info = pd.DataFrame({"participant_id": participants["participant_id"].astype(str)})
    info["agent"] = participants["agent"] if "agent" in participants else np.nan
    info["dose_mg_per_kg"] = _numeric(participants, "dose_mg_per_kg")
    info["weight_kg"] = _numeric(participants, "weight_kg")
    info["primary_tumor"] = (participants["primary_tumor"] if "primary_tumor" in participants
                             else np.nan)
    info["arm"] = [_arm(a, d) for a, d in zip(info["agent"], info["dose_mg_per_kg"],
                                               strict=True)]
    return info.drop_duplicates("participant_id").reset_index(drop=True)


def _natural_key(label: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", str(label)) if t)


@lru_cache(maxsize=256)
def _substance(name: str) -> str | None:
    try:
        return resolve_agent(name).substance or None
    except (ValueError, KeyError):
        return None


def _other_agent_timepoint(label: str, agent: object) -> bool:
    """True for a ``ce-<X>`` timepoint whose X is a known substance other than the agent's."""
    match = re.search(r"(?:^|_)ce-([A-Za-z0-9]+)", str(label))
    if not match or not isinstance(agent, str):
        return False
    tp_substance, agent_substance = _substance(match.group(1)), _substance(agent)
    return None not in (tp_substance, agent_substance) and tp_substance != agent_substance


def _pick_timepoints(lesions: pd.DataFrame, info: pd.DataFrame, which: str) -> dict[str, str]:
    """Per participant, the timepoint label of its early (or late) post-agent timepoint."""
    agents = dict(zip(info["participant_id"], info["agent"], strict=True))
    hours = _numeric(lesions, "hours_post_injection")
    table = (pd.DataFrame({"pid": lesions["participant_id"], "tp": lesions["timepoint"],
                           "h": hours})
             .groupby(["pid", "tp"], sort=True)["h"].median())
    chosen: dict[str, tuple] = {}
    for (pid, tp), h in table.items():
        if _other_agent_timepoint(tp, agents.get(pid)):
            continue
        if which == "early":
            key = (h if np.isfinite(h) else math.inf, _natural_key(tp))
            if pid not in chosen or key < chosen[pid][0]:
                chosen[pid] = (key, tp)
        else:
            key = (h if np.isfinite(h) else -math.inf, _natural_key(tp))
            if pid not in chosen or key > chosen[pid][0]:
                chosen[pid] = (key, tp)
    return {pid: tp for pid, (_, tp) in chosen.items()}


def _pick_method(methods: set[str]) -> str:
    for method in METHOD_PREFERENCE:
        if method in methods:
            return method
    return sorted(methods)[0]


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(values.value_counts().items())}


def analysis_rows(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                  timepoint: str = "early", t1_method: str | None = None,
                  measurable_only: bool = False) -> tuple[pd.DataFrame, dict]:
    """The lesion rows an analysis uses, with the participants.tsv columns merged in.

    Parameters
    ----------
    lesions : DataFrame
        Stacked lesion tables (:func:`combine_lesion_tables`).
    participants : DataFrame, optional
        ``participants.tsv``.
    timepoint : str
        A timepoint label (``ses-D1``), or ``"early"``/``"late"`` for each participant's
        first/last post-agent timepoint (module docstring).
    t1_method : str, optional
        Keep this T1 method only; default: one method per participant (first of
        :data:`METHOD_PREFERENCE` present).
    measurable_only : bool
        Keep rows with ``measurable`` true only (ignored, and said so, when the column is
        absent).

    Returns
    -------
    rows : DataFrame
        One row per participant × lesion, with ``agent``, ``dose_mg_per_kg``, ``weight_kg``,
        ``primary_tumor`` and ``arm`` added.
    selection : dict
        How the rows were chosen and how many timepoints/methods/participants they span.
    """
    info = participant_info(participants)
    selection: dict = {"timepoint": timepoint, "t1_method": t1_method or "per participant: "
                       + " > ".join(METHOD_PREFERENCE), "measurable_only": measurable_only}
    rows = lesions
    if rows.empty or "timepoint" not in rows or "participant_id" not in rows:
        rows = pd.DataFrame(columns=["participant_id", "timepoint", "lesion_id"])
    elif timepoint in ("early", "late"):
        chosen = _pick_timepoints(rows, info, timepoint)
        rows = rows[rows["timepoint"] == rows["participant_id"].map(chosen)]
    else:
        rows = rows[rows["timepoint"] == timepoint]
    if "t1_method" in rows and not rows.empty:
        method = rows["t1_method"].fillna("").astype(str)
        if t1_method:
            rows = rows[method == t1_method]
        else:
            picked = method.groupby(rows["participant_id"]).agg(lambda m: _pick_method(set(m)))
            rows = rows[method == rows["participant_id"].map(picked)]
    if measurable_only:
        if "measurable" in rows:
            rows = rows[_truthy(rows["measurable"])]
        else:
            selection["measurable_only"] = "requested, but no 'measurable' column: all lesions"
    # participants.tsv is the authority on dose/agent: drop same-named lesion columns first.
    rows = rows.drop(columns=[c for c in info.columns if c != "participant_id" and c in rows])
    rows = rows.merge(info, on="participant_id", how="left")
    rows["arm"] = rows["arm"].astype(object).fillna("unknown")
    selection["timepoints_used"] = _counts(rows["timepoint"]) if "timepoint" in rows else {}
    if "t1_method" in rows:
        selection["t1_methods_used"] = _counts(rows["t1_method"].fillna("n/a"))
    selection["n_participants"] = int(rows["participant_id"].nunique()) if len(rows) else 0
    selection["n_lesions"] = len(rows)
    return rows.reset_index(drop=True), selection


def _skipped(name: str, reason: str, **extra) -> dict:
    return {"analysis": name, "status": "skipped", "reason": reason, **extra}


def _missing(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c not in frame or not frame[c].notna().any()]


def _mean_sd_n(values: pd.Series) -> dict:
    v = values[np.isfinite(values)]
    return {"mean": float(v.mean()) if len(v) else math.nan,
            "sd": float(v.std(ddof=1)) if len(v) >= 2 else math.nan, "n": len(v)}


def _units(column: str) -> str:
    for suffix, units in (("_mg_per_L", "mg/L"), ("_mM", "mmol/L Gd"), ("_percent", "%"),
                          ("_mm", "mm"), ("_bits", "bit")):
        if column.split("_mean")[0].endswith(suffix) or column.endswith(suffix):
            return units
    return "n/a"


# --------------------------------------------------------------------------- analyses


def dose_response(lesions: pd.DataFrame, participants: pd.DataFrame | None,
                  timepoint: str = "early", t1_method: str | None = None,
                  value_column: str = "se_percent_mean", measurable_only: bool = True) -> dict:
    """OLS of the per-dose-group mean uptake (default SE, %) on dose (mg/kg), NanoRad style.

    Groups are the distinct doses > 0 of the treated participants (placebo excluded). Each
    group's mean is lesion-weighted (all the group's lesions pooled), as the paper's "mean SE
    per dose group"; ``fit_patient_weighted`` repeats the fit on means of patient means.
    Needs at least 2 dose groups.
    """
    name = "dose_response"
    rows, selection = analysis_rows(lesions, participants, timepoint, t1_method, measurable_only)
    params = {"value_column": value_column, "value_units": _units(value_column),
              "dose_units": "mg/kg", "weighting": "lesion"}
    missing = _missing(rows, [value_column, "dose_mg_per_kg"])
    if missing:
        return _skipped(name, f"missing or empty column(s): {', '.join(missing)}",
                        parameters=params, selection=selection)
    rows = rows.assign(value=_numeric(rows, value_column))
    rows = rows[(rows["arm"] == "treated") & (rows["dose_mg_per_kg"] > 0)
                & np.isfinite(rows["value"])]
    groups = []
    for dose, group in rows.groupby("dose_mg_per_kg", sort=True):
        stats = _mean_sd_n(group["value"])
        patient_means = group.groupby("participant_id")["value"].mean()
        groups.append({"dose_mg_per_kg": float(dose), "mean": stats["mean"], "sd": stats["sd"],
                       "n_lesions": stats["n"], "n_participants": int(patient_means.size),
                       "mean_patient_weighted": float(patient_means.mean())})
    if len(groups) < 2:
        return _skipped(name, f"{len(groups)} dose group(s) with data; need at least 2",
                        parameters=params, selection=selection, groups=groups)
    doses = [g["dose_mg_per_kg"] for g in groups]
    return {"analysis": name, "status": "ok", "parameters": params, "selection": selection,
            "n_lesions": len(rows), "n_participants": int(rows["participant_id"].nunique()),
            "groups": groups, "fit": ols_fit(doses, [g["mean"] for g in groups]),
            "fit_patient_weighted": ols_fit(doses, [g["mean_patient_weighted"] for g in groups]),
            "assumptions": ["uptake linear in dose over the doses given",
                            "each dose group's mean pools its lesions (lesion-weighted)"]}


def se_vs_concentration_per_participant(
        lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
        timepoint: str = "early", t1_method: str | None = None,
        se_column: str = "se_percent_mean", concentration_column: str = "mass_mg_per_L_mean",
        measurable_only: bool = True, min_lesions: int = 3, treated_only: bool = True) -> dict:
    """Per participant, OLS of lesion mean SE (%) on lesion mean concentration (NanoRad).

    Participants with fewer than ``min_lesions`` usable lesions (default 3: with 2 points R²
    is always 1) or no spread in concentration are listed under ``skipped_participants``.
    """
    name = "se_vs_concentration_per_participant"
    rows, selection = analysis_rows(lesions, participants, timepoint, t1_method, measurable_only)
    params = {"se_column": se_column, "concentration_column": concentration_column,
              "concentration_units": _units(concentration_column),
              "slope_units": f"% per {_units(concentration_column)}",
              "min_lesions": min_lesions, "treated_only": treated_only}
    missing = _missing(rows, [se_column, concentration_column])
    if missing:
        return _skipped(name, f"missing or empty column(s): {', '.join(missing)}",
                        parameters=params, selection=selection)
    if treated_only:
        rows = rows[rows["arm"] != "placebo"]
    fits, skipped = [], []
    for pid, group in rows.groupby("participant_id", sort=True):
        x, y = _finite_pairs(_numeric(group, concentration_column), _numeric(group, se_column))
        entry = {"participant_id": pid, "dose_mg_per_kg": _first(group, "dose_mg_per_kg"),
                 "timepoint": str(group["timepoint"].iloc[0])}
        if x.size < min_lesions:
            skipped.append({**entry, "reason": f"{x.size} lesion(s) with both values; "
                            f"need {min_lesions}"})
            continue
        try:
            fits.append({**entry, **ols_fit(x, y)})
        except ValueError as exc:
            skipped.append({**entry, "reason": str(exc)})
    result = {"analysis": name, "status": "ok" if fits else "skipped", "parameters": params,
              "selection": selection, "fits": fits, "skipped_participants": skipped}
    if not fits:
        result["reason"] = "no participant with enough lesions"
    return result


def _first(group: pd.DataFrame, column: str) -> object:
    if column not in group:
        return None
    value = group[column].iloc[0]
    return None if pd.isna(value) else (float(value) if isinstance(value, (int, float, np.number))
                                        else str(value))


def size_vs_uptake_lar(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                       timepoint: str = "early", t1_method: str | None = None,
                       size_column: str = "equiv_diameter_mm",
                       uptake_column: str = "mass_mg_per_L_mean",
                       measurable_only: bool = False, min_lesions: int = 3) -> dict:
    """LAR line of lesion mean concentration on equivalent diameter (NanoBrainMets).

    Fitted separately on treated and on placebo participants' lesions (the paper: a linear
    relation for AGuIX, none for placebo); participants of unknown arm are left out. The OLS
    line is reported next to it to show what the robust fit changes.
    """
    name = "size_vs_uptake_lar"
    rows, selection = analysis_rows(lesions, participants, timepoint, t1_method, measurable_only)
    params = {"size_column": size_column, "size_units": "mm", "uptake_column": uptake_column,
              "uptake_units": _units(uptake_column), "min_lesions": min_lesions,
              "fit": "least absolute residuals (exact LP)",
              "r_squared_definition": "1 - sum((y - yhat_LAR)^2) / sum((y - mean(y))^2)"}
    missing = _missing(rows, [size_column, uptake_column])
    if missing:
        return _skipped(name, f"missing or empty column(s): {', '.join(missing)}",
                        parameters=params, selection=selection)
    result = {"analysis": name, "status": "ok", "parameters": params, "selection": selection}
    for arm in ("treated", "placebo"):
        part = rows[rows["arm"] == arm]
        x, y = _finite_pairs(_numeric(part, size_column), _numeric(part, uptake_column))
        if x.size < min_lesions:
            result[arm] = {"status": "skipped",
                           "reason": f"{x.size} {arm} lesion(s); need {min_lesions}"}
            continue
        try:
            result[arm] = {"status": "ok", "n_participants": int(part["participant_id"].nunique()),
                           "lar": lar_fit(x, y), "ols": ols_fit(x, y)}
        except ValueError as exc:
            result[arm] = {"status": "skipped", "reason": str(exc)}
    if all(result[arm]["status"] == "skipped" for arm in ("treated", "placebo")):
        result["status"] = "skipped"
        result["reason"] = "; ".join(f"{a}: {result[a]['reason']}" for a in ("treated", "placebo"))
    return result


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    sd = features.std(axis=0)  # population SD: the participants are the whole sample
    return (features - mean) / np.where(sd > 0, sd, 1.0), mean, sd


def classify_placebo(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                     timepoint: str = "early", t1_method: str | None = None,
                     uptake_column: str = "gd_mM_mean", entropy_column: str = "gd_entropy_bits",
                     measurable_only: bool = False) -> dict:
    """Suspected-placebo classification (inference): entropy + mean uptake, k-means k = 2.

    Per participant, the features are the mean over its lesions of ``uptake_column`` (Gd
    concentration, mM: independent of the mass convention) and of ``entropy_column``; without
    a usable entropy column the uptake alone is used (recorded). Each feature is standardised
    to a z-score over the participants (a feature with no spread is dropped), clustered with
    :func:`kmeans_two`, and the cluster with the lower mean raw uptake is "suspected placebo".
    The arm from participants.tsv is *never* a feature; when known it is only compared with
    the result (``agreement``).
    """
    name = "suspected_placebo_kmeans"
    rows, selection = analysis_rows(lesions, participants, timepoint, t1_method, measurable_only)
    params = {"uptake_column": uptake_column, "uptake_units": _units(uptake_column),
              "entropy_column": entropy_column, "k": 2,
              "standardisation": "z-score per feature over participants (population SD)",
              "init": "farthest point from the lowest-uptake participant (deterministic)"}
    base = {"inference": True, "caveat": KMEANS_CAVEAT, "parameters": params,
            "selection": selection}
    if _missing(rows, [uptake_column]):
        return _skipped(name, f"missing or empty column: {uptake_column}", **base)
    per = pd.DataFrame({"participant_id": rows["participant_id"],
                        "uptake": _numeric(rows, uptake_column),
                        "entropy": _numeric(rows, entropy_column)})
    feats = per.groupby("participant_id", sort=True).mean()
    unclassified = sorted(feats.index[~np.isfinite(feats["uptake"])])
    feats = feats[np.isfinite(feats["uptake"])]
    used = ["uptake"]
    if entropy_column not in rows:
        base["feature_note"] = f"no '{entropy_column}' column: mean uptake alone"
    elif not np.all(np.isfinite(feats["entropy"])):
        base["feature_note"] = f"'{entropy_column}' missing for some participants: uptake alone"
    else:
        used.append("entropy")
    base["unclassified_participants"] = unclassified
    if len(feats) < 2:
        return _skipped(name, f"{len(feats)} participant(s) with features; need at least 2",
                        **base)
    z, mean, sd = _standardise(feats[used].to_numpy())
    keep = sd > 0
    dropped = [f for f, k in zip(used, keep, strict=True) if not k]
    if dropped:
        base["dropped_constant_features"] = dropped
    if not keep.any():
        return _skipped(name, "the features do not vary between participants", **base)
    used = [f for f, k in zip(used, keep, strict=True) if k]
    try:
        km = kmeans_two(z[:, keep])
    except ValueError as exc:
        return _skipped(name, str(exc), **base)
    labels = km["labels"]
    cluster_uptake = [float(feats["uptake"].to_numpy()[labels == k].mean()) for k in (0, 1)]
    placebo_cluster = int(np.argmin(cluster_uptake))  # tie → cluster 0 (the low-uptake start)
    total_ss = float(np.sum((z[:, keep] - z[:, keep].mean(axis=0)) ** 2))
    within_ss = float(np.sum(np.min(km["distances"], axis=1) ** 2))
    results = []
    for i, pid in enumerate(feats.index):
        entry = {"participant_id": pid,
                 "label": "suspected placebo" if labels[i] == placebo_cluster
                 else "suspected agent",
                 "uptake_mean_of_lesions": float(feats["uptake"].iloc[i]),
                 "entropy_mean_of_lesions": float(feats["entropy"].iloc[i]),
                 "distance_to_placebo_centre": float(km["distances"][i, placebo_cluster]),
                 "distance_to_agent_centre": float(km["distances"][i, 1 - placebo_cluster])}
        results.append(entry)
    out = {"analysis": name, "status": "ok", **base, "features_used": used,
           "n_participants": len(results), "n_suspected_placebo":
           int(np.sum(labels == placebo_cluster)), "between_ss_fraction":
           (1.0 - within_ss / total_ss) if total_ss > 0 else math.nan,
           "kmeans_iterations": km["n_iter"], "converged": km["converged"],
           "participants": results}
    out["agreement"] = _agreement(results, participant_info(participants))
    return out


def _agreement(results: list[dict], info: pd.DataFrame) -> dict:
    """Compare the inferred labels with the arms of participants.tsv (never an input)."""
    arms = dict(zip(info["participant_id"], info["arm"], strict=True))
    known = [(r["label"], arms.get(r["participant_id"], "unknown")) for r in results]
    known = [(label, arm) for label, arm in known if arm in ("placebo", "treated")]
    if not known:
        return {"status": "skipped", "reason": "no participant with a known arm"}
    table = {f"{arm} -> {label}": 0 for arm in ("placebo", "treated")
             for label in ("suspected placebo", "suspected agent")}
    for label, arm in known:
        table[f"{arm} -> {label}"] += 1
    n_agree = table["placebo -> suspected placebo"] + table["treated -> suspected agent"]
    return {"status": "ok", "n_known": len(known), "n_agree": n_agree,
            "fraction_agree": n_agree / len(known), "confusion": table}


def dose_normalised_se(lesions: pd.DataFrame, participants: pd.DataFrame | None,
                       reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG,
                       timepoint: str = "early",
                       t1_method: str | None = None, se_column: str = "se_percent_mean",
                       size_edges_mm: Sequence[float] = DEFAULT_SIZE_EDGES_MM,
                       measurable_only: bool = True) -> dict:
    """Dose-normalised SE (``SE · reference / dose``) by primary tumour and by size class.

    Treated lesions only (a placebo dose of 0 cannot be normalised). Per group: mean, sample SD
    (ddof = 1) and the numbers of lesions and participants. Size classes use
    ``longest_diameter_mm`` (:func:`size_class`); each breakdown is skipped with a reason when
    its column is missing.
    """
    name = "dose_normalised_se"
    rows, selection = analysis_rows(lesions, participants, timepoint, t1_method, measurable_only)
    params = {"se_column": se_column, "reference_dose_mg_per_kg": float(reference_dose_mg_per_kg),
              "units": "%", "size_column": "longest_diameter_mm",
              "size_edges_mm": [float(e) for e in size_edges_mm], "size_classes_closed": "left",
              "assumption": "SE proportional to dose (NanoRad)"}
    missing = _missing(rows, [se_column, "dose_mg_per_kg"])
    if missing:
        return _skipped(name, f"missing or empty column(s): {', '.join(missing)}",
                        parameters=params, selection=selection)
    rows = rows[rows["arm"] == "treated"]
    rows = rows.assign(se_norm=dose_normalised(_numeric(rows, se_column).to_numpy(),
                                               rows["dose_mg_per_kg"].to_numpy(),
                                               reference_dose_mg_per_kg))
    rows = rows[np.isfinite(rows["se_norm"])]
    if rows.empty:
        return _skipped(name, "no treated lesion with an SE and a dose > 0", parameters=params,
                        selection=selection)
    result = {"analysis": name, "status": "ok", "parameters": params, "selection": selection,
              "all": {**_mean_sd_n(rows["se_norm"]),
                      "n_participants": int(rows["participant_id"].nunique())}}
    if rows["primary_tumor"].notna().any():
        result["by_primary_tumor"] = _group_stats(rows, rows["primary_tumor"].fillna("unknown"))
    else:
        result["by_primary_tumor"] = {"status": "skipped",
                                      "reason": "no primary_tumor in participants.tsv"}
    if "longest_diameter_mm" in rows and rows["longest_diameter_mm"].notna().any():
        classes = size_class(_numeric(rows, "longest_diameter_mm"), size_edges_mm)
        result["by_size_class"] = _group_stats(rows, pd.Series(classes, index=rows.index))
    else:
        result["by_size_class"] = {"status": "skipped", "reason": "no longest_diameter_mm column"}
    return result


def _group_stats(rows: pd.DataFrame, keys: pd.Series) -> dict:
    groups = []
    for key, part in rows.groupby(keys.astype(str), sort=True):
        groups.append({"group": key, **_mean_sd_n(part["se_norm"]),
                       "n_participants": int(part["participant_id"].nunique())})
    return {"status": "ok", "groups": groups}


def persistence_ratios(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                       early: str = DEFAULT_PERSISTENCE_TIMEPOINTS[0],
                       late: str = DEFAULT_PERSISTENCE_TIMEPOINTS[1],
                       t1_method: str | None = None, se_column: str = "se_percent_mean",
                       concentration_column: str = "gd_mM_mean", measurable_only: bool = True,
                       se_concentration_slopes: Mapping[str, float] | None = None,
                       upper_limit_units: str = "mg/L", treated_only: bool = True) -> dict:
    """Late/early (default D8/D1) ratios per lesion and per participant, for SE and concentration.

    Lesions are matched on ``participant_id`` and ``lesion_id`` within one T1 method per
    participant (present at both timepoints). Per participant the ratio of the mean late to
    the mean early value is given too (NanoRad: 32.4/175.8 = 0.18). When
    ``se_concentration_slopes`` (participant → early SE-vs-concentration slope) is given, the
    late concentration upper limit ``mean late SE / slope`` is added (NanoRad's ≤ 10 µM,
    intercept ignored as in the paper), in ``upper_limit_units`` (those of the slopes'
    concentration). Late lesions flagged ``gd_below_loq`` are counted. Each participant entry
    carries its arm from participants.tsv; placebo participants are left out unless
    ``treated_only`` is False (their ratios are noise over noise).
    """
    name = "persistence"
    params = {"early_timepoint": early, "late_timepoint": late, "se_column": se_column,
              "concentration_column": concentration_column,
              "concentration_units": _units(concentration_column),
              "ratio_definition": "late / early; n/a when early <= 0"}
    paired, selection = paired_timepoint_rows(lesions, early, late, t1_method, measurable_only)
    if isinstance(paired, str):
        return _skipped(name, paired, parameters=params, selection=selection)
    info = participant_info(participants)
    arms = dict(zip(info["participant_id"], info["arm"], strict=True))
    params["treated_only"] = treated_only
    if treated_only:
        paired = paired[[arms.get(pid, "unknown") != "placebo" for pid in paired["participant_id"]]]
        if paired.empty:
            return _skipped(name, "only placebo participants have both timepoints",
                            parameters=params, selection=selection)
    out = {"analysis": name, "status": "ok", "parameters": params, "selection": selection,
           "n_lesions_paired": len(paired)}
    for quantity, column in (("se", se_column), ("concentration", concentration_column)):
        if _missing(paired, [f"{column}_early", f"{column}_late"]):
            out[quantity] = {"status": "skipped", "reason": f"missing or empty column: {column}"}
            continue
        e, la = _numeric(paired, f"{column}_early"), _numeric(paired, f"{column}_late")
        ratios = pd.Series(persistence_ratio(la, e), index=paired.index)
        # The median is given too: ratios to small early values are noisy and skew the mean.
        out[quantity] = {"status": "ok", "lesion_ratio": {**_mean_sd_n(ratios),
                                                          "median": float(ratios.median())},
                         "participants": _participant_persistence(paired, e, la, arms)}
    if "gd_below_loq_late" in paired:
        out["n_late_lesions_below_loq"] = int(_truthy(paired["gd_below_loq_late"]).sum())
    if se_concentration_slopes and out["se"]["status"] == "ok":
        for entry in out["se"]["participants"]:
            slope = se_concentration_slopes.get(entry["participant_id"])
            if slope is not None:
                entry["late_concentration_upper_limit"] = float(
                    concentration_from_se(entry["late_mean"], slope))
                entry["upper_limit_slope"] = float(slope)
        out["upper_limit_definition"] = ("mean late SE / early per-participant SE-vs-"
                                         "concentration slope (intercept ignored, NanoRad)")
        out["upper_limit_units"] = upper_limit_units
    return out


def paired_timepoint_rows(lesions: pd.DataFrame, early: str, late: str, t1_method: str | None,
                 measurable_only: bool) -> tuple[pd.DataFrame | str, dict]:
    """Lesions present at both timepoints, one T1 method per participant (or a skip reason)."""
    selection: dict = {"t1_method": t1_method or "per participant, present at both: "
                       + " > ".join(METHOD_PREFERENCE), "measurable_only": measurable_only}
    if lesions.empty or "timepoint" not in lesions or "lesion_id" not in lesions:
        return "no lesion rows", selection
    rows = lesions[lesions["timepoint"].isin([early, late])]
    absent = [tp for tp in (early, late) if not (rows["timepoint"] == tp).any()]
    if absent:
        return f"no lesion rows at {', '.join(absent)}", selection
    key = ["participant_id", "lesion_id"]
    if "t1_method" in rows:
        rows = rows.assign(t1_method=rows["t1_method"].fillna("").astype(str))
        if t1_method:
            rows = rows[rows["t1_method"] == t1_method]
        else:
            at = rows.groupby(["participant_id", "timepoint"])["t1_method"].agg(set)
            common = at.groupby(level=0).agg(lambda sets: set.intersection(*sets)
                                             if len(sets) == 2 else set())
            picked = {pid: _pick_method(m) for pid, m in common.items() if m}
            rows = rows[rows["t1_method"] == rows["participant_id"].map(picked)]
        key.append("t1_method")
    first = rows[rows["timepoint"] == early]
    if measurable_only:  # measurability is judged at the early timepoint
        if "measurable" in first:
            first = first[_truthy(first["measurable"])]
        else:
            selection["measurable_only"] = "requested, but no 'measurable' column: all lesions"
    paired = first.merge(rows[rows["timepoint"] == late], on=key, suffixes=("_early", "_late"))
    selection["n_participants"] = int(paired["participant_id"].nunique())
    if "t1_method" in paired:
        selection["t1_methods_used"] = _counts(paired["t1_method"])
    if paired.empty:
        return "no lesion present at both timepoints with the same T1 method", selection
    return paired, selection


def _participant_persistence(paired: pd.DataFrame, early: pd.Series, late: pd.Series,
                             arms: Mapping[str, str]) -> list:
    frame = pd.DataFrame({"pid": paired["participant_id"], "e": early, "l": late}).dropna()
    entries = []
    for pid, part in frame.groupby("pid", sort=True):
        e_mean, l_mean = float(part["e"].mean()), float(part["l"].mean())
        entries.append({"participant_id": pid, "arm": arms.get(pid, "unknown"),
                        "n_lesions": len(part), "early_mean": e_mean,
                        "late_mean": l_mean,
                        "ratio_of_means": float(persistence_ratio(l_mean, e_mean))})
    return entries


# --------------------------------------------------------------------------- per participant

#: (output column, source column, aggregation) of :func:`participant_summary`.
_SUMMARY_COLUMNS = (
    ("gd_mM_mean_of_lesion_means", "gd_mM_mean", "mean"),
    ("gd_mM_mean_of_lesion_p75", "gd_mM_p75", "mean"),
    ("mass_mg_per_L_mean_of_lesion_means", "mass_mg_per_L_mean", "mean"),
    ("mass_mg_per_L_mean_of_lesion_p75", "mass_mg_per_L_p75", "mean"),
    ("se_percent_mean_of_lesion_means", "se_percent_mean", "mean"),
    ("gd_entropy_bits_mean_of_lesions", "gd_entropy_bits", "mean"),
    ("percent_injected_dose_per_g_mean_of_lesions", "percent_injected_dose_per_g", "mean"),
    ("hours_post_injection", "hours_post_injection", "median"),
)


def participant_summary(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                        ) -> pd.DataFrame:
    """One row per participant × timepoint (× T1 method): means of the lesion statistics.

    Columns: ``n_lesions``, ``n_measurable``, ``gd_mM_mean_of_lesion_means`` and
    ``gd_mM_mean_of_lesion_p75`` (mmol/L Gd), ``gd_mM_mean_of_measurable_lesion_means``,
    ``mass_mg_per_L_mean_of_lesion_means`` / ``_p75`` (mg/L), ``se_percent_mean_of_lesion_means``
    (%), ``gd_entropy_bits_mean_of_lesions`` (bit), ``n_lesions_below_loq``,
    ``percent_injected_dose_per_g_mean_of_lesions`` (%ID/g; from the lesion column, else
    computed from the mean mass concentration, dose and weight with
    :func:`~bids_agquant.qmri.uptake.percent_injected_dose_per_g`), ``hours_post_injection``,
    then ``agent``, ``dose_mg_per_kg``, ``weight_kg``, ``primary_tumor`` from participants.tsv.
    Statistics whose lesion column is absent are left out (not filled with n/a).
    """
    if lesions.empty:
        return pd.DataFrame(columns=["participant_id", "timepoint", "n_lesions"])
    keys = ["participant_id", "timepoint"] + (["t1_method"] if "t1_method" in lesions else [])
    frame = lesions[keys].copy()
    frame["lesion_id"] = lesions["lesion_id"] if "lesion_id" in lesions else 0
    present = [(out, src, how) for out, src, how in _SUMMARY_COLUMNS if src in lesions]
    for _, src, _ in present:
        frame[src] = _numeric(lesions, src)
    if "measurable" in lesions:
        measurable = _truthy(lesions["measurable"])
        frame["_measurable"] = measurable.astype(int)
        frame["_measurable_gd"] = _numeric(lesions, "gd_mM_mean").where(measurable)
    if "gd_below_loq" in lesions:
        frame["_below_loq"] = _truthy(lesions["gd_below_loq"]).astype(int)
    aggs = {"n_lesions": ("lesion_id", "size")}
    if "_measurable" in frame:
        aggs["n_measurable"] = ("_measurable", "sum")
    for out, src, how in present:
        aggs[out] = (src, how)
        if out == "gd_mM_mean_of_lesion_means" and "_measurable" in frame:
            aggs["gd_mM_mean_of_measurable_lesion_means"] = ("_measurable_gd", "mean")
    if "_below_loq" in frame:
        aggs["n_lesions_below_loq"] = ("_below_loq", "sum")
    summary = frame.groupby(keys, sort=True).agg(**aggs).reset_index()
    info = participant_info(participants)
    if not info.empty:
        summary = summary.merge(info.drop(columns="arm"), on="participant_id", how="left")
        if ("percent_injected_dose_per_g_mean_of_lesions" not in summary
                and "mass_mg_per_L_mean_of_lesion_means" in summary):
            # %ID/g is linear in the concentration: the %ID/g of the mean is the mean %ID/g.
            summary.insert(summary.columns.get_loc("mass_mg_per_L_mean_of_lesion_means") + 1,
                           "percent_injected_dose_per_g_mean_of_lesions",
                           percent_injected_dose_per_g(
                               summary["mass_mg_per_L_mean_of_lesion_means"].to_numpy(),
                               summary["dose_mg_per_kg"].to_numpy(),
                               summary["weight_kg"].to_numpy()))
    return summary


# --------------------------------------------------------------------------- orchestration


def run_group_analyses(lesions: pd.DataFrame, participants: pd.DataFrame | None = None,
                       reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG,
                       persistence_timepoints: Sequence[str] = DEFAULT_PERSISTENCE_TIMEPOINTS,
                       size_edges_mm: Sequence[float] = DEFAULT_SIZE_EDGES_MM) -> dict:
    """Every group analysis with its default parameters, keyed by analysis name.

    The k-means classification is stored under ``inference_suspected_placebo_kmeans``.
    Returns a JSON-ready dict (NaN values are left as floats; the writer turns them into null).
    """
    se_conc = se_vs_concentration_per_participant(lesions, participants)
    slopes = {f["participant_id"]: f["slope"] for f in se_conc.get("fits", [])}
    early, late = persistence_timepoints
    analyses = {
        "dose_response": dose_response(lesions, participants),
        "se_vs_concentration_per_participant": se_conc,
        "size_vs_uptake_lar": size_vs_uptake_lar(lesions, participants),
        "dose_normalised_se": dose_normalised_se(lesions, participants,
                                                 reference_dose_mg_per_kg,
                                                 size_edges_mm=size_edges_mm),
        "persistence": persistence_ratios(
            lesions, participants, early=early, late=late, se_concentration_slopes=slopes,
            upper_limit_units=se_conc["parameters"]["concentration_units"]),
        "inference_suspected_placebo_kmeans": classify_placebo(lesions, participants),
    }
    optional = ["gd_entropy_bits", "mass_mg_per_L_p75", "gd_below_loq",
                "percent_injected_dose_per_g", "se_percent_mean", "hours_post_injection"]
    return {
        "inputs": {
            "n_participants_with_tables": int(lesions["participant_id"].nunique())
            if "participant_id" in lesions else 0,
            "n_lesion_rows": len(lesions),
            "timepoints": _counts(lesions["timepoint"]) if "timepoint" in lesions else {},
            "t1_methods": _counts(lesions["t1_method"]) if "t1_method" in lesions else {},
            "participants_tsv": participants is not None,
            "optional_columns_missing": [c for c in optional if c not in lesions],
        },
        "parameters": {"reference_dose_mg_per_kg": float(reference_dose_mg_per_kg),
                       "persistence_timepoints": list(persistence_timepoints),
                       "size_edges_mm": [float(e) for e in size_edges_mm],
                       "default_timepoint": "early (per participant)",
                       "t1_method_preference": list(METHOD_PREFERENCE)},
        "analyses": analyses,
        "skipped": {k: v["reason"] for k, v in analyses.items() if v["status"] == "skipped"},
    }
