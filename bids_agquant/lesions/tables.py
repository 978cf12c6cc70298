"""The per-timepoint tables: lesions (with LoQ and quality columns), controls, profiles.

Also the label map of one lesion per label from a contour image (``desc-GTV_dseg`` or a
binary ``label-GTV_mask``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from ..config import DEFAULT_MEASURABLE_THRESHOLD_MM
from .geometry import lesion_geometry
from .intensity import lesion_concentration_features, lesion_intensity_stats
from .profiles import line_profiles
from .quality import (
    CONTROL_SE_TOLERANCE_PERCENT,
    NORMAL_TISSUE_MARGIN_VOXELS,
    control_failed,
    control_rois,
    limit_of_quantification,
    normal_tissue_enhancement,
    quantification_labels,
)


def lesion_table(
    labels: np.ndarray,
    affine: np.ndarray,
    maps: Mapping[str, np.ndarray],
    measurable_threshold_mm: float = DEFAULT_MEASURABLE_THRESHOLD_MM,
) -> pd.DataFrame:
    """Geometry and intensity statistics of every lesion, merged on ``lesion_id``.

    Parameters
    ----------
    labels, affine, measurable_threshold_mm
        See :func:`~bids_agquant.lesions.geometry.lesion_geometry`.
    maps : mapping of str to numpy.ndarray
        See :func:`~bids_agquant.lesions.intensity.lesion_intensity_stats` (may be
        empty). With ``"gd_mM"`` (and ``"mass_mg_per_L"``) the
        :func:`~bids_agquant.lesions.intensity.lesion_concentration_features` are added.

    Returns
    -------
    pandas.DataFrame
        The :func:`~bids_agquant.lesions.geometry.lesion_geometry` columns followed by the
        :func:`~bids_agquant.lesions.intensity.lesion_intensity_stats` (and
        concentration-feature) columns, one row per lesion, sorted by id.
    """
    geometry = lesion_geometry(labels, affine, measurable_threshold_mm)
    stats = lesion_intensity_stats(labels, maps)
    table = geometry.merge(stats, on="lesion_id", how="left", validate="one_to_one")
    if "gd_mM" in maps:
        features = lesion_concentration_features(labels, maps["gd_mM"],
                                                 maps.get("mass_mg_per_L"))
        table = table.merge(features, on="lesion_id", how="left", validate="one_to_one")
    return table


def _quality_columns(table: pd.DataFrame, labels: np.ndarray, affine: np.ndarray,
                     maps: Mapping[str, np.ndarray], normal: np.ndarray, timepoint: str,
                     r1_per_mM_per_s: float | None,
                     se_tolerance_percent: float) -> pd.DataFrame:
    """Add the LoQ, quantification and normal-tissue SE columns to ``table`` (in place) and
    return the healthy-tissue control table."""
    normal = normal & ~ndimage.binary_dilation(labels > 0,
                                               iterations=NORMAL_TISSUE_MARGIN_VOXELS)
    dr1 = maps["deltaR1"]
    controls = control_rois(labels, normal, affine)
    stats = lesion_intensity_stats(controls, {k: v for k, v in maps.items()
                                              if k in ("deltaR1", "gd_mM", "se_percent")})
    stats.insert(1, "n_voxels", np.bincount(controls.ravel())[stats["lesion_id"]])
    # One call for lesions and controls: regions of one size share the filtering.
    limits = limit_of_quantification(dr1, normal, [*table["n_voxels"], *stats["n_voxels"]])
    loq = limits[: len(table)]
    table["deltaR1_loq"] = loq
    if r1_per_mM_per_s:
        table["gd_mM_loq"] = loq / r1_per_mM_per_s
    if "se_percent" in maps:
        # The normalised column subtracts normal tissue's SE (recorded; the raw SE is kept).
        reference = normal_tissue_enhancement(maps["se_percent"], normal)
        table["se_percent_normal_tissue"] = reference
        table["se_percent_mean_normalised"] = table["se_percent_mean"] - reference
    table["quantification"] = quantification_labels(table["deltaR1_mean"], loq)

    stats = stats.rename(columns={"lesion_id": "roi_id"})
    stats.insert(1, "timepoint", timepoint)
    stats["deltaR1_loq"] = limits[len(table):]
    stats["control_failed"] = control_failed(
        stats["deltaR1_mean"], stats["deltaR1_loq"],
        stats["se_percent_mean"] if "se_percent_mean" in stats else None, se_tolerance_percent)
    return stats


def uptake_tables(
    labels: np.ndarray,
    affine: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    timepoint: str,
    t1_method: str | None = None,
    names: Mapping[int, str] | None = None,
    normal: np.ndarray | None = None,
    measurable_threshold_mm: float = DEFAULT_MEASURABLE_THRESHOLD_MM,
    hours_post_injection: float | None = None,
    dose_mg_per_kg: float | None = None,
    weight_kg: float | None = None,
    r1_per_mM_per_s: float | None = None,
    se_tolerance_percent: float = CONTROL_SE_TOLERANCE_PERCENT,
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """The lesion, healthy-tissue control and line-profile tables of one timepoint.

    Parameters
    ----------
    labels, affine
        Lesion labels on the reference grid and its voxel-to-world matrix (mm).
    maps : mapping of str to ndarray
        ``gd_mM``, ``mass_mg_per_L``, ``deltaR1``, ``t1_baseline_s``, ``t1_post_s`` and
        optionally ``se_percent`` on the same grid.
    timepoint, t1_method : str
        Recorded in the tables.
    names : mapping of int to str, optional
        Lesion names by label (``_dseg.tsv``); ``"n/a"`` for unnamed labels.
    normal : ndarray of bool, optional
        Normal tissue (signal mask without the lesions and a margin): the blank of the LoQ
        and where the control regions go. Without it there are no LoQ columns and no
        control table.
    measurable_threshold_mm : float
        Longest diameter at or above which a lesion is measurable.
    hours_post_injection, dose_mg_per_kg, weight_kg : float, optional
        Recorded; dose and weight give %ID/g (NaN for a placebo or when unknown).
    r1_per_mM_per_s : float, optional
        Relaxivity used for the concentrations: the LoQ in mM.
    se_tolerance_percent : float
        |SE| above which a healthy-tissue control fails.

    Returns
    -------
    lesions, controls, profiles : pandas.DataFrame
        ``controls`` is None without ``normal``.
    """
    from ..qmri.uptake import percent_injected_dose_per_g

    table = lesion_table(labels, affine, maps, measurable_threshold_mm=measurable_threshold_mm)
    table.insert(1, "timepoint", timepoint)
    if t1_method:
        table.insert(2, "t1_method", t1_method)
    if names is not None:
        table.insert(1, "lesion_name", [names.get(int(i), "n/a") for i in table["lesion_id"]])
    controls = None
    if normal is not None:
        controls = _quality_columns(table, labels, affine, maps, normal, timepoint,
                                    r1_per_mM_per_s, se_tolerance_percent)
    profiles, summary = line_profiles(labels, affine, maps["mass_mg_per_L"])
    summary = summary.rename(columns={"ring_mean": "ring_mass_mg_per_L"})
    for column in ("ring_mass_mg_per_L", "peak_to_valley_ratio"):
        table[column] = table["lesion_id"].map(summary.set_index("lesion_id")[column])
    profiles = profiles.rename(columns={"value": "mass_mg_per_L"})
    profiles.insert(1, "timepoint", timepoint)
    table["percent_injected_dose_per_g"] = percent_injected_dose_per_g(
        table["mass_mg_per_L_mean"].to_numpy(), dose_mg_per_kg, weight_kg)
    table["hours_post_injection"] = (hours_post_injection if hours_post_injection is not None
                                     else np.nan)
    return table, controls, profiles


def labels_from_contours(data: np.ndarray, kind: str) -> np.ndarray:
    """An int16 label map, one label per lesion, from a contour image.

    Parameters
    ----------
    data : ndarray
        3-D contour image: integer labels (``kind="dseg"``) or a binary mask
        (``kind="mask"``: lesions are its 26-connected components).
    kind : {"dseg", "mask"}

    Raises
    ------
    ValueError
        Not 3-D, non-integer labels, or labels outside 0..32767.
    """
    if data.ndim != 3:
        raise ValueError(f"contours must be a 3-D image, got shape {data.shape}")
    if not np.allclose(data, np.rint(data)):
        raise ValueError("contour labels must be integers")
    labels = np.rint(data).astype(np.int64)
    if kind == "mask":
        labels, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if labels.min() < 0 or labels.max() > np.iinfo(np.int16).max:
        raise ValueError("label values out of range")
    return labels.astype(np.int16)
