"""Nipype adapters for the report's numbers (science in ``bids_agquant.qc``)."""

from __future__ import annotations

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..qmri.masks import exclude_dilated_labels, margin_iterations


class _RegistrationQualityInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="reference image (baseline T1w)")
    registered_image = File(exists=True, mandatory=True,
                            desc="the session T1w resampled onto the reference grid")
    moving_image = File(exists=True, desc="the session T1w before registration (any grid of "
                                          "the same scanner space): gives the 'before' values")
    mask = File(exists=True, mandatory=True, desc="voxels compared, reference grid")
    exclude_labels = File(exists=True, desc="lesion labels on the reference grid, cut out")
    exclude_margin_mm = traits.Float(4.0, usedefault=True, desc="dilation of excluded labels")


class _RegistrationQualityOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="sidecar fields: RegistrationQuality (after, before, mask)")
    correlation = traits.Float(desc="Pearson r after registration")
    normalised_mutual_information = traits.Float(desc="NMI after registration (1..2)")


class RegistrationQuality(SimpleInterface):
    """Correlation and normalised mutual information of the registered session T1w with the
    baseline T1w, inside the head with the lesions cut out (``bids_agquant.qc``)."""

    input_spec = _RegistrationQualityInputSpec
    output_spec = _RegistrationQualityOutputSpec

    def _run_interface(self, runtime):
        from ..qc import NMI_BINS, registration_quality

        fixed_img = nb.load(self.inputs.fixed_image)
        fixed = np.asarray(fixed_img.dataobj, np.float64)
        registered = np.asarray(nb.load(self.inputs.registered_image).dataobj, np.float64)
        mask_img = nb.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        if mask.shape != fixed.shape or registered.shape != fixed.shape:
            raise ValueError(f"{self.inputs.registered_image} / {self.inputs.mask}: grid differs "
                             f"from {self.inputs.fixed_image}")
        margin = 0
        if self.inputs.exclude_labels:
            labels = np.asarray(nb.load(self.inputs.exclude_labels).dataobj) > 0
            if labels.shape != mask.shape:
                raise ValueError(f"{self.inputs.exclude_labels}: grid differs from "
                                 f"{self.inputs.fixed_image}")
            voxel_mm = float(np.min(fixed_img.header.get_zooms()[:3]))
            margin = margin_iterations(self.inputs.exclude_margin_mm, voxel_mm)
            mask = exclude_dilated_labels(mask, labels, margin)
        after = registration_quality(fixed, registered, mask)
        quality = {
            "Metric": "Pearson correlation and normalised mutual information "
                      f"(H(A)+H(B))/H(A,B), {NMI_BINS}-bin joint histogram, of the baseline "
                      "T1w and this image",
            "Mask": "signal mask of the baseline T1w"
                    + (f", lesions dilated by {margin} voxels cut out" if margin else ""),
            "NumberOfVoxels": after["n_voxels"],
            "Correlation": after["correlation"],
            "NormalisedMutualInformation": after["normalised_mutual_information"],
        }
        if self.inputs.moving_image:
            from nibabel.processing import resample_from_to

            moving_img = nb.load(self.inputs.moving_image)
            moving = resample_from_to(moving_img, fixed_img, order=1, cval=0.0)
            before = registration_quality(fixed, np.asarray(moving.dataobj, np.float64), mask)
            quality["CorrelationBeforeRegistration"] = before["correlation"]
            quality["NormalisedMutualInformationBeforeRegistration"] = (
                before["normalised_mutual_information"])
        # JSON has no NaN: an undefined value (too few voxels, flat image) is null.
        quality = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                   for k, v in quality.items()}
        self._results["metadata"] = {"RegistrationQuality": quality}
        self._results["correlation"] = after["correlation"]
        self._results["normalised_mutual_information"] = after["normalised_mutual_information"]
        return runtime
