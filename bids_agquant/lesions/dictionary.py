"""BIDS JSON data dictionaries of the lesion, control, profile and persistence tables."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .intensity import ENTROPY_BIN_WIDTH_MM

_FIXED_COLUMNS: dict[str, dict] = {
    "lesion_id": {
        "LongName": "Lesion identifier",
        "Description": "Integer label of the lesion in the desc-GTV_dseg label image.",
    },
    "timepoint": {
        "LongName": "Timepoint",
        "Description": "BIDS session label of the timepoint the row describes.",
    },
    "longest_axial_diameter_mm": {
        "LongName": "Longest axial diameter (RECIST 1.1 / RANO-BM)",
        "Description": "Largest in-plane distance between two voxel centres of the lesion in "
                       "one axial slice (slices along the voxel axis closest to superior).",
        "Units": "mm",
    },
    "gd_entropy_bits": {
        "LongName": "Entropy of the Gd concentration histogram",
        "Description": "Shannon entropy (log2) of the lesion's Gd concentration histogram with "
                       f"fixed bins of {ENTROPY_BIN_WIDTH_MM} mM anchored at 0; noise-only "
                       "lesions score low, heterogeneous uptake high.",
        "Units": "bit",
    },
    "percent_injected_dose_per_g": {
        "LongName": "Percent injected dose per gram",
        "Description": "100 x mean mass concentration [mg/L] x 1e-3 / (dose [mg/kg] x body "
                       "weight [kg]), tissue density 1 kg/L; n/a without dose or weight.",
        "Units": "%/g",
    },
    "deltaR1_loq": {
        "LongName": "Lower limit of quantification of the lesion-mean Delta R1",
        "Description": "10 x the robust (MAD) standard deviation of mean Delta R1 over "
                       "normal-tissue cubes of the lesion's volume (ICH Q2: 10 sigma of the "
                       "blank); includes noise, its spatial correlation and residual "
                       "misregistration.",
        "Units": "1/s",
    },
    "gd_mM_loq": {
        "LongName": "Lower limit of quantification of the lesion-mean Gd concentration",
        "Description": "deltaR1_loq / r1.",
        "Units": "mmol/L",
    },
    "quantification": {
        "LongName": "Quantification status",
        "Description": "Whether the lesion-mean concentration is above the lower limit of "
                       "quantification; the numbers of a '<LoQ' lesion are not a measurement.",
        "Levels": {"quantified": "|mean Delta R1| >= LoQ", "<LoQ": "|mean Delta R1| < LoQ",
                   "n/a": "LoQ not available (too little normal tissue)"},
    },
    "se_percent_normal_tissue": {
        "LongName": "Signal enhancement of normal-appearing tissue",
        "Description": "Median SE over normal tissue (signal mask without the lesions and a "
                       "2-voxel margin) of this timepoint.",
        "Units": "%",
    },
    "se_percent_mean_normalised": {
        "LongName": "Lesion signal enhancement relative to normal tissue",
        "Description": "se_percent_mean - se_percent_normal_tissue: removes a global signal "
                       "change (scaling, receive bias) between the sessions.",
        "Units": "%",
    },
    "ring_mass_mg_per_L": {
        "LongName": "Surrounding normal-tissue mass concentration",
        "Description": "Mean mass concentration in a 4 mm ring around the lesion (other "
                       "lesions excluded): the baseline of the line profiles.",
        "Units": "mg/L",
    },
    "peak_to_valley_ratio": {
        "LongName": "Peak-to-valley ratio of the line profiles",
        "Description": "Largest / smallest mass concentration inside the lesion along its "
                       "right-left and anterior-posterior profiles through the centroid; n/a "
                       "when the smallest is <= 0.",
    },
    "t1_method": {
        "LongName": "T1 mapping method",
        "Description": "Method of the T1 maps the concentrations come from.",
        "Levels": {"vfa": "variable flip angle (DESPOT1)", "mp2rage": "MP2RAGE look-up"},
    },
    "n_voxels": {
        "LongName": "Number of voxels",
        "Description": "Number of voxels carrying this lesion label in the label image.",
    },
    "volume_ml": {
        "LongName": "Lesion volume",
        "Description": "Number of voxels times the voxel volume |det(affine[:3,:3])|.",
        "Units": "mL",
    },
    "equiv_diameter_mm": {
        "LongName": "Equivalent-sphere diameter",
        "Description": "Diameter of the sphere with the lesion volume, (6V/pi)^(1/3).",
        "Units": "mm",
    },
    "longest_diameter_mm": {
        "LongName": "Longest 3-D diameter",
        "Description": (
            "Maximum 3-D Feret diameter: largest distance between two voxel centres of the "
            "lesion, in physical space. Underestimates the physical extent by about one "
            "voxel; 0 for a single voxel. Not the RECIST/RANO-BM axial diameter."
        ),
        "Units": "mm",
    },
    "measurable": {
        "LongName": "Measurable lesion",
        "Description": (
            "True when longest_diameter_mm is greater than or equal to the measurability "
            "threshold (default 10 mm, inclusive)."
        ),
    },
    "negative_fraction": {
        "LongName": "Fraction of negative Gd concentration voxels",
        "Description": (
            "Fraction (0-1) of the lesion voxels with a finite Gd concentration that are "
            "negative (noise, misregistration); negative values are kept in all statistics."
        ),
    },
}

for _axis in "xyz":
    _FIXED_COLUMNS[f"centroid_{_axis}_mm"] = {
        "LongName": f"Lesion centroid, {_axis} coordinate",
        "Description": (
            f"Mean {_axis} world coordinate (NIfTI scanner frame, RAS+) of the lesion voxel "
            "centres in the space of the label image."
        ),
        "Units": "mm",
    }

_STAT_TEXT = {
    "mean": ("mean", "Mean over the lesion voxels with a finite value"),
    "sd": (
        "standard deviation",
        "Sample standard deviation (ddof=1) over the lesion voxels with a finite value; "
        "n/a for fewer than 2 voxels",
    ),
    "median": ("median", "Median over the lesion voxels with a finite value"),
    "p25": ("25th percentile", "25th percentile (linear interpolation) over the lesion voxels"),
    "p75": ("75th percentile", "75th percentile (linear interpolation) over the lesion voxels"),
    "min": ("minimum", "Smallest value over the lesion voxels with a finite value"),
    "max": ("maximum", "Largest value over the lesion voxels with a finite value"),
    "iqr": ("interquartile range", "p75 - p25 (linear interpolation) over the lesion voxels"),
    "uqmean": ("upper-quartile mean", "Mean of the lesion voxels at or above the lesion's "
               "75th percentile (the 'upper quartile' of NanoBrainMets)"),
}


def _quantity(prefix: str) -> tuple[str, str, str | None] | None:
    """LongName, description and Units of a known map prefix, or None."""
    if prefix == "gd_mM":
        return ("Gd concentration", "Gd concentration, Delta R1 / r1 (per Gd ion)", "mmol/L")
    if prefix == "mass_mg_per_L":
        return (
            "Nanoparticle mass concentration",
            "Mass concentration of the agent, Gd concentration x molar mass / Gd per particle",
            "mg/L",
        )
    if prefix in ("deltaR1", "delta_r1", "deltaR1_per_s"):
        return ("Delta R1", "Change of R1 from the baseline session, R1_post - R1_pre", "1/s")
    if prefix in ("se_percent", "se"):
        return (
            "Signal enhancement",
            "T1-weighted signal enhancement 100 (S_post - S_pre) / S_pre",
            "%",
        )
    m = re.fullmatch(r"t1_(.+)_s", prefix)
    if m:
        return (f"T1 ({m.group(1)})", f"T1 relaxation time at the {m.group(1)} timepoint", "s")
    m = re.fullmatch(r"r1_(.+)_per_s", prefix)
    if m:
        return (f"R1 ({m.group(1)})", f"R1 relaxation rate at the {m.group(1)} timepoint", "1/s")
    return None


def _units_from_suffix(name: str) -> str | None:
    for suffix, units in (
        ("_per_s", "1/s"),
        ("_mg_per_L", "mg/L"),
        ("_mM", "mmol/L"),
        ("_percent", "%"),
        ("_mm", "mm"),
        ("_ml", "mL"),
        ("_s", "s"),
    ):
        if name.endswith(suffix):
            return units
    return None


def _describe(column: str) -> dict[str, str]:
    if column in _FIXED_COLUMNS:
        return dict(_FIXED_COLUMNS[column])
    m = re.fullmatch(r"vol_pct_mass_(le_|gt_)?([\d.]+)(?:_to_([\d.]+))?_mg_per_L", column)
    if m:
        kind, a, b = m.groups()
        where = {"le_": f"<= {a} mg/L", "gt_": f"> {a} mg/L"}.get(kind, f"in ({a}, {b}] mg/L")
        return {"LongName": f"Percent of lesion volume with mass concentration {where}",
                "Description": "Percentage of the lesion voxels with a finite concentration "
                               f"whose agent mass concentration is {where}.",
                "Units": "%"}
    prefix, _, stat = column.rpartition("_")
    if prefix and stat in _STAT_TEXT:
        stat_long, stat_desc = _STAT_TEXT[stat]
        known = _quantity(prefix)
        if known is not None:
            long_name, desc, units = known
        else:
            long_name, desc, units = prefix, f"Map '{prefix}'", _units_from_suffix(prefix)
        entry = {
            "LongName": f"{long_name}, lesion {stat_long}",
            "Description": f"{stat_desc}. Quantity: {desc}.",
        }
        if units is not None:
            entry["Units"] = units
        return entry
    entry = {"LongName": column, "Description": f"Column '{column}' (no description available)."}
    units = _units_from_suffix(column)
    if units is not None:
        entry["Units"] = units
    return entry


def column_dictionary(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """BIDS JSON data dictionary entries for lesion-table columns.

    Parameters
    ----------
    columns : iterable of str
        Column names of a lesion table (e.g. ``DataFrame.columns``).

    Returns
    -------
    dict
        ``{column: {"LongName": ..., "Description": ..., "Units": ...}}`` for every column
        (``Units`` is omitted for dimensionless columns such as ``lesion_id``,
        ``n_voxels``, ``measurable``, ``negative_fraction``). Statistic columns
        ``<map>_{mean,sd,median,p25,p75}`` of known maps (``gd_mM`` mmol/L,
        ``mass_mg_per_L`` mg/L, ``deltaR1`` 1/s, ``t1_<tp>_s`` s, ``r1_<tp>_per_s`` 1/s,
        ``se_percent`` %) are described with their units; unknown columns get a generic
        description (units guessed from a unit-like suffix); this never raises for them.
    """
    return {str(col): _describe(str(col)) for col in columns}


PROFILE_DICTIONARY = {
    "lesion_id": {"LongName": "Lesion identifier"},
    "timepoint": {"LongName": "Timepoint"},
    "direction": {"LongName": "Profile direction", "Levels": {
        "RL": "right-left, along the voxel axis closest to world R",
        "AP": "anterior-posterior, along the voxel axis closest to world A"}},
    "position_mm": {"LongName": "Position from the lesion centroid", "Units": "mm",
                    "Description": "Positive towards right (RL) or anterior (AP)."},
    "mass_mg_per_L": {"LongName": "Mass concentration", "Units": "mg/L",
                      "Description": "Inside the lesion the map value; outside it "
                                     "the mean of the 4 mm surrounding normal ring."},
    "inside": {"LongName": "Inside the lesion"},
}

PERSISTENCE_DICTIONARY = {
    "lesion_id": {"LongName": "Lesion identifier"},
    "early_timepoint": {"LongName": "Early timepoint (the denominator)"},
    "late_timepoint": {"LongName": "Late timepoint (the numerator)"},
    "late_quantification": {"LongName": "Quantification status at the late timepoint",
                            "Description": "'<LoQ': the late concentration, and so "
                                           "its ratio, is not a measurement."},
}


def control_dictionary(columns: Iterable[str], se_tolerance_percent: float) -> dict:
    """BIDS data dictionary of the healthy-tissue control table.

    Parameters
    ----------
    columns : iterable of str
        The table's columns.
    se_tolerance_percent : float
        The SE limit of the failure rule (stated in ``control_failed``'s description).
    """
    own = {
        "roi_id": {"LongName": "Control region", "Description": "Sphere of healthy tissue "
                   "(no lesion within 10 mm), radius of the median lesion's equivalent "
                   "sphere (at least 4 mm); NanoRad's negative control."},
        "deltaR1_loq": {"LongName": "LoQ of the region-mean Delta R1", "Units": "1/s",
                        "Description": "10 x robust SD of normal-tissue means over "
                                       "regions of this size."},
        "control_failed": {"LongName": "Control failed", "Description": "True when "
                           "|Delta R1 mean| exceeds its LoQ or |SE mean| exceeds "
                           f"{se_tolerance_percent:g} %."},
    }
    full = column_dictionary([c for c in columns if c not in own])
    full.update(own)
    return full


def persistence_dictionary(columns: Iterable[str]) -> dict:
    """BIDS data dictionary of a persistence table.

    See :func:`~bids_agquant.lesions.persistence.persistence_table`.
    """
    dictionary = dict(PERSISTENCE_DICTIONARY)
    for column in columns:
        if column.endswith("_ratio"):
            dictionary[column] = {"LongName": f"{column[:-6]} late / early",
                                  "Description": "n/a when the early value is <= 0."}
        elif column.endswith(("_early", "_late")) and column not in dictionary:
            dictionary[column] = {"LongName": column}
    return dictionary
