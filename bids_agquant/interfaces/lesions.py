"""Nipype adapters for contours and per-lesion tables (science in ``bids_agquant.lesions``)."""

from __future__ import annotations

import json
import os

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage


class _PrepareContoursInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="desc-GTV_dseg or label-GTV_mask")
    kind = traits.Enum("dseg", "mask", usedefault=True)


class _PrepareContoursOutputSpec(TraitedSpec):
    labels = File(exists=True, desc="integer label map, one label per lesion (int16)")
    n_lesions = traits.Int()


class PrepareContours(SimpleInterface):
    """Turn the contour file into an int16 label map (binary masks → connected components)."""

    input_spec = _PrepareContoursInputSpec
    output_spec = _PrepareContoursOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        data = np.asarray(img.dataobj)
        if data.ndim != 3:
            raise ValueError(f"{self.inputs.in_file}: contours must be a 3-D image, "
                             f"got shape {data.shape}")
        if not np.allclose(data, np.rint(data)):
            raise ValueError(f"{self.inputs.in_file}: contour labels must be integers")
        data = np.rint(data).astype(np.int64)
        if self.inputs.kind == "mask":
            data, _ = ndimage.label(data > 0, structure=np.ones((3, 3, 3)))
        if data.min() < 0 or data.max() > np.iinfo(np.int16).max:
            raise ValueError(f"{self.inputs.in_file}: label values out of range")
        header = img.header.copy()
        header.set_data_dtype(np.int16)
        header.set_slope_inter(1, 0)
        path = os.path.join(runtime.cwd, "labels.nii.gz")
        nb.Nifti1Image(data.astype(np.int16), img.affine, header).to_filename(path)
        self._results["labels"] = path
        self._results["n_lesions"] = int(len(np.unique(data[data > 0])))
        return runtime


def _write_table(cwd: str, name: str, table: pd.DataFrame, dictionary: dict) -> tuple[str, str]:
    """``<name>.tsv`` (n/a for missing values) and its JSON data dictionary in ``cwd``."""
    tsv = os.path.join(cwd, f"{name}.tsv")
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    sidecar = os.path.join(cwd, f"{name}.json")
    with open(sidecar, "w") as handle:
        json.dump(dictionary, handle, indent=2)
    return tsv, sidecar


class _LesionTableInputSpec(BaseInterfaceInputSpec):
    labels = File(exists=True, mandatory=True, desc="lesion labels in reference space")
    gd_conc = File(exists=True, mandatory=True)
    mass_conc = File(exists=True, mandatory=True)
    delta_r1 = File(exists=True, mandatory=True)
    t1_pre = File(exists=True, mandatory=True)
    t1_post = File(exists=True, mandatory=True)
    enhancement = File(exists=True, desc="SE % map in reference space")
    names_tsv = File(exists=True, desc="dseg.tsv with index/name columns")
    timepoint = traits.Str(mandatory=True)
    t1_method = traits.Str(desc="T1 method the concentrations come from (vfa, mp2rage)")
    measurable_threshold_mm = traits.Float(10.0, usedefault=True)
    hours_post_injection = traits.Either(None, traits.Float, usedefault=True)
    dose_mg_per_kg = traits.Either(None, traits.Float, usedefault=True)
    weight_kg = traits.Either(None, traits.Float, usedefault=True)
    normal_mask = File(exists=True, desc="normal tissue (signal mask without the lesions and a "
                                         "margin), reference grid: noise for the LoQ and the "
                                         "healthy-tissue controls")
    r1_per_mM_per_s = traits.Float(desc="relaxivity used for the concentrations, 1/(mM s)")
    se_tolerance_percent = traits.Float(10.0, usedefault=True,
                                        desc="|SE| above which a healthy-tissue control fails")


class _LesionTableOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True, desc="BIDS data dictionary of the columns")
    controls_tsv = File(desc="healthy-tissue control regions (with normal_mask)")
    profiles_tsv = File(exists=True, desc="right-left and anterior-posterior line profiles")
    profiles_json = File(exists=True, desc="data dictionary of the profiles table")
    controls_json = File(desc="data dictionary of the controls table")


class LesionTable(SimpleInterface):
    """One row per lesion: size, concentration, ΔR1, T1, SE (``lesions.lesion_table``)."""

    input_spec = _LesionTableInputSpec
    output_spec = _LesionTableOutputSpec

    def _run_interface(self, runtime):
        from ..lesions import column_dictionary, lesion_table

        label_img = nb.load(self.inputs.labels)
        labels = np.asarray(label_img.dataobj).astype(np.int64)

        def load(path):
            data = np.asarray(nb.load(path).dataobj, np.float64)
            if data.shape != labels.shape:
                raise ValueError(f"{path}: grid differs from the lesion labels")
            return data

        maps = {
            "gd_mM": load(self.inputs.gd_conc),
            "mass_mg_per_L": load(self.inputs.mass_conc),
            "deltaR1": load(self.inputs.delta_r1),
            "t1_baseline_s": load(self.inputs.t1_pre),
            "t1_post_s": load(self.inputs.t1_post),
        }
        if self.inputs.enhancement:
            maps["se_percent"] = load(self.inputs.enhancement)
        table = lesion_table(labels, label_img.affine, maps,
                             measurable_threshold_mm=self.inputs.measurable_threshold_mm)
        table.insert(1, "timepoint", self.inputs.timepoint)
        if self.inputs.t1_method:
            table.insert(2, "t1_method", self.inputs.t1_method)
        if self.inputs.names_tsv:
            names = pd.read_csv(self.inputs.names_tsv, sep="\t")
            if {"index", "name"} <= set(names.columns):
                lookup = dict(zip(names["index"].astype(int), names["name"].astype(str),
                                  strict=True))
                names = [lookup.get(int(i), "n/a") for i in table["lesion_id"]]
                table.insert(1, "lesion_name", names)
        from ..qmri.uptake import percent_injected_dose_per_g

        if self.inputs.normal_mask:
            self._quality(runtime, table, labels, label_img.affine, maps)
        self._profiles(runtime, table, labels, label_img.affine, maps["mass_mg_per_L"])
        # NaN for a placebo (dose 0) or when participants.tsv lacks the dose or weight.
        table["percent_injected_dose_per_g"] = percent_injected_dose_per_g(
            table["mass_mg_per_L_mean"].to_numpy(), self.inputs.dose_mg_per_kg,
            self.inputs.weight_kg)
        table["hours_post_injection"] = (self.inputs.hours_post_injection
                                         if self.inputs.hours_post_injection is not None
                                         else np.nan)
        self._results["out_tsv"], self._results["out_json"] = _write_table(
            runtime.cwd, "lesions", table, column_dictionary(list(table.columns)))
        return runtime

    def _profiles(self, runtime, table, labels, affine, mass):
        """Line profiles of the mass concentration (TSV) and their per-lesion summary."""
        from ..lesions import line_profiles

        profiles, summary = line_profiles(labels, affine, mass)
        summary = summary.rename(columns={"ring_mean": "ring_mass_mg_per_L"})
        for column in ("ring_mass_mg_per_L", "peak_to_valley_ratio"):
            table[column] = table["lesion_id"].map(summary.set_index("lesion_id")[column])
        profiles = profiles.rename(columns={"value": "mass_mg_per_L"})
        profiles.insert(1, "timepoint", self.inputs.timepoint)
        dictionary = {
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
        self._results["profiles_tsv"], self._results["profiles_json"] = _write_table(
            runtime.cwd, "profiles", profiles, dictionary)

    def _quality(self, runtime, table, labels, affine, maps):
        """LoQ columns of the lesion table and the healthy-tissue control table."""
        from ..lesions import control_rois, lesion_intensity_stats, limit_of_quantification

        normal = np.asarray(nb.load(self.inputs.normal_mask).dataobj) > 0
        if normal.shape != labels.shape:
            raise ValueError(f"{self.inputs.normal_mask}: grid differs from the lesion labels")
        # Keep a margin: the lesion edge (partial volume, resampling) is not normal tissue.
        normal &= ~ndimage.binary_dilation(labels > 0, iterations=2)
        dr1 = maps["deltaR1"]
        controls = control_rois(labels, normal, affine)
        stats = lesion_intensity_stats(controls, {k: v for k, v in maps.items()
                                                  if k in ("deltaR1", "gd_mM", "se_percent")})
        stats.insert(1, "n_voxels", np.bincount(controls.ravel())[stats["lesion_id"]])
        # One call for lesions and controls: regions of one size share the filtering.
        limits = limit_of_quantification(dr1, normal, [*table["n_voxels"], *stats["n_voxels"]])
        loq = limits[: len(table)]
        table["deltaR1_loq"] = loq
        if self.inputs.r1_per_mM_per_s:
            table["gd_mM_loq"] = loq / self.inputs.r1_per_mM_per_s
        if "se_percent" in maps:
            # SE of normal-appearing tissue: receive-bias changes and drift show up here;
            # the normalised column subtracts it (recorded, the raw SE is kept).
            se = maps["se_percent"]
            reference = float(np.nanmedian(np.where(normal, se, np.nan))) if normal.any() \
                else np.nan
            table["se_percent_normal_tissue"] = reference
            table["se_percent_mean_normalised"] = table["se_percent_mean"] - reference
        # The dedicated column: a mean below the LoQ is never a bare number.
        table["quantification"] = np.where(
            ~np.isfinite(loq), "n/a",
            np.where(np.abs(table["deltaR1_mean"]) < loq, "<LoQ", "quantified"))

        stats = stats.rename(columns={"lesion_id": "roi_id"})
        stats.insert(1, "timepoint", self.inputs.timepoint)
        stats["deltaR1_loq"] = limits[len(table):]
        failed = np.abs(stats["deltaR1_mean"]) > stats["deltaR1_loq"]
        if "se_percent_mean" in stats:
            failed |= np.abs(stats["se_percent_mean"]) > self.inputs.se_tolerance_percent
        stats["control_failed"] = failed
        dictionary = {
            "roi_id": {"LongName": "Control region", "Description": "Sphere of healthy tissue "
                       "(no lesion within 10 mm), radius of the median lesion's equivalent "
                       "sphere (at least 4 mm); NanoRad's negative control."},
            "deltaR1_loq": {"LongName": "LoQ of the region-mean Delta R1", "Units": "1/s",
                            "Description": "10 x robust SD of normal-tissue means over "
                                           "regions of this size."},
            "control_failed": {"LongName": "Control failed", "Description": "True when "
                               "|Delta R1 mean| exceeds its LoQ or |SE mean| exceeds "
                               f"{self.inputs.se_tolerance_percent:g} %."},
        }
        from ..lesions import column_dictionary

        full = column_dictionary([c for c in stats.columns if c not in dictionary])
        full.update(dictionary)
        self._results["controls_tsv"], self._results["controls_json"] = _write_table(
            runtime.cwd, "controls", stats, full)


class _PersistenceInputSpec(BaseInterfaceInputSpec):
    early = File(exists=True, mandatory=True, desc="lesion table of the early timepoint")
    late = File(exists=True, mandatory=True, desc="lesion table of the late timepoint")


class _PersistenceOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)


class Persistence(SimpleInterface):
    """Late/early ratios per lesion (``lesions.persistence_table``)."""

    input_spec = _PersistenceInputSpec
    output_spec = _PersistenceOutputSpec

    def _run_interface(self, runtime):
        from ..lesions import persistence_table

        early = pd.read_csv(self.inputs.early, sep="\t", na_values=["n/a"])
        late = pd.read_csv(self.inputs.late, sep="\t", na_values=["n/a"])
        table = persistence_table(early, late)
        dictionary = {
            "lesion_id": {"LongName": "Lesion identifier"},
            "early_timepoint": {"LongName": "Early timepoint (the denominator)"},
            "late_timepoint": {"LongName": "Late timepoint (the numerator)"},
            "late_quantification": {"LongName": "Quantification status at the late timepoint",
                                    "Description": "'<LoQ': the late concentration, and so "
                                                   "its ratio, is not a measurement."},
        }
        for column in table.columns:
            if column.endswith("_ratio"):
                dictionary[column] = {"LongName": f"{column[:-6]} late / early",
                                      "Description": "n/a when the early value is <= 0."}
            elif column.endswith(("_early", "_late")) and column not in dictionary:
                dictionary[column] = {"LongName": column}
        self._results["out_tsv"], self._results["out_json"] = _write_table(
            runtime.cwd, "persistence", table, dictionary)
        return runtime
