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

from ..config import DEFAULT_MEASURABLE_THRESHOLD_MM
from ..io import save_nifti
from ..lesions import CONTROL_SE_TOLERANCE_PERCENT


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
        from ..lesions import labels_from_contours

        img = nb.load(self.inputs.in_file)
        try:
            labels = labels_from_contours(np.asarray(img.dataobj), self.inputs.kind)
        except ValueError as exc:
            raise ValueError(f"{self.inputs.in_file}: {exc}") from None
        self._results["labels"] = save_nifti(os.path.join(runtime.cwd, "labels.nii.gz"), labels,
                                             like=img, dtype=np.int16)
        self._results["n_lesions"] = int(len(np.unique(labels[labels > 0])))
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
    measurable_threshold_mm = traits.Float(DEFAULT_MEASURABLE_THRESHOLD_MM, usedefault=True)
    hours_post_injection = traits.Either(None, traits.Float, usedefault=True)
    dose_mg_per_kg = traits.Either(None, traits.Float, usedefault=True)
    weight_kg = traits.Either(None, traits.Float, usedefault=True)
    normal_mask = File(exists=True, desc="normal tissue (signal mask without the lesions and a "
                                         "margin), reference grid: noise for the LoQ and the "
                                         "healthy-tissue controls")
    r1_per_mM_per_s = traits.Float(desc="relaxivity used for the concentrations, 1/(mM s)")
    se_tolerance_percent = traits.Float(CONTROL_SE_TOLERANCE_PERCENT, usedefault=True,
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
        from ..lesions import (
            PROFILE_DICTIONARY,
            column_dictionary,
            control_dictionary,
            uptake_tables,
        )

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
        normal = None
        if self.inputs.normal_mask:
            normal = np.asarray(nb.load(self.inputs.normal_mask).dataobj) > 0
            if normal.shape != labels.shape:
                raise ValueError(f"{self.inputs.normal_mask}: grid differs from the lesion "
                                 "labels")
        table, controls, profiles = uptake_tables(
            labels, label_img.affine, maps, timepoint=self.inputs.timepoint,
            t1_method=self.inputs.t1_method or None, names=_lesion_names(self.inputs.names_tsv),
            normal=normal, measurable_threshold_mm=self.inputs.measurable_threshold_mm,
            hours_post_injection=self.inputs.hours_post_injection,
            dose_mg_per_kg=self.inputs.dose_mg_per_kg, weight_kg=self.inputs.weight_kg,
            r1_per_mM_per_s=self.inputs.r1_per_mM_per_s or None,
            se_tolerance_percent=self.inputs.se_tolerance_percent)
        cwd = runtime.cwd
        if controls is not None:
            self._results["controls_tsv"], self._results["controls_json"] = _write_table(
                cwd, "controls", controls,
                control_dictionary(controls.columns, self.inputs.se_tolerance_percent))
        self._results["profiles_tsv"], self._results["profiles_json"] = _write_table(
            cwd, "profiles", profiles, PROFILE_DICTIONARY)
        self._results["out_tsv"], self._results["out_json"] = _write_table(
            cwd, "lesions", table, column_dictionary(list(table.columns)))
        return runtime


def _lesion_names(names_tsv) -> dict[int, str] | None:
    """Lesion names by label from a ``_dseg.tsv`` with ``index`` and ``name`` columns."""
    if not names_tsv:
        return None
    names = pd.read_csv(names_tsv, sep="\t")
    if not {"index", "name"} <= set(names.columns):
        return None
    return dict(zip(names["index"].astype(int), names["name"].astype(str), strict=True))


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
        from ..lesions import persistence_dictionary, persistence_table

        early = pd.read_csv(self.inputs.early, sep="\t", na_values=["n/a"])
        late = pd.read_csv(self.inputs.late, sep="\t", na_values=["n/a"])
        table = persistence_table(early, late)
        dictionary = persistence_dictionary(table.columns)
        self._results["out_tsv"], self._results["out_json"] = _write_table(
            runtime.cwd, "persistence", table, dictionary)
        return runtime
