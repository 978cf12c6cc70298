"""Nipype adapters around the quantitative-MRI core (``bids_agquant.qmri``).

Each interface loads NIfTI files, calls the pure functions of ``qmri``, and writes its
results into the node's working directory (:func:`bids_agquant.io.save_nifti`). No science
happens here.
"""

from __future__ import annotations

import logging
import os

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..io import save_nifti
from ..qmri.masks import exclude_dilated_labels, fit_mask, margin_iterations, signal_mask

LOGGER = logging.getLogger("bids_agquant")


class _FitVFAInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="one image per flip")
    flip_angles_deg = traits.List(traits.Float, mandatory=True, desc="nominal flip angles, deg")
    repetition_time_s = traits.Float(mandatory=True, desc="TR of the SPGR acquisition, s")
    b1_map = File(exists=True, desc="B1+ map (fraction or percent), any grid of the session")
    b1_units = traits.Str(desc="the B1 map sidecar's Units, if any")
    method = traits.Enum("linear", "wlls", "nlls", usedefault=True, desc="fit method")


class _FitVFAOutputSpec(TraitedSpec):
    t1map = File(exists=True, desc="T1, seconds; 0 where invalid")
    r1map = File(exists=True, desc="R1 = 1/T1, 1/s; 0 where invalid")
    valid_mask = File(exists=True, desc="voxels with a physically valid fit")
    reference_image = File(exists=True, desc="highest-flip image, for registration")
    b1_decision = traits.Str(desc="how the B1 map units were interpreted")


def _b1_on_grid(b1_map: str, units: str | None, reference: nb.Nifti1Image):
    """B1+ fraction on ``reference``'s grid, and the units decision (the workflow passes the
    fraction map of ``ComputeB1``, ``units="fraction"``)."""
    from ..b1maps import b1_on_grid
    from ..qmri.b1 import b1_to_fraction

    b1, decision = b1_to_fraction(b1_on_grid(nb.load(b1_map), reference), units or None)
    LOGGER.info("%s: %s", b1_map, decision)
    return b1, decision


def _save_t1_fit(results: dict, fit, like: nb.Nifti1Image, cwd: str) -> None:
    """T1 (s), R1 (1/s) and validity maps of a fit into ``cwd``, recorded in ``results``."""
    results["t1map"] = save_nifti(os.path.join(cwd, "T1map.nii.gz"), fit.t1_s, like=like)
    results["r1map"] = save_nifti(os.path.join(cwd, "R1map.nii.gz"), fit.r1_per_s, like=like)
    results["valid_mask"] = save_nifti(os.path.join(cwd, "valid.nii.gz"), fit.valid, like=like,
                                       dtype=np.uint8)


def _same_grid(files, images):
    ref = images[0]
    for f, img in zip(files, images, strict=True):
        if img.ndim != 3 and not (img.ndim == 4 and img.shape[3] == 1):
            raise ValueError(f"{f}: expected a 3-D image, got shape {img.shape}")
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise ValueError(f"{f}: images of one acquisition must share one grid "
                             f"(as {files[0]})")


def _volume(img: nb.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])


class FitVFA(SimpleInterface):
    """DESPOT1 T1 fit of a VFA set (``qmri.vfa.fit_vfa``), optional B1+."""

    input_spec = _FitVFAInputSpec
    output_spec = _FitVFAOutputSpec

    def _run_interface(self, runtime):
        from ..qmri.vfa import fit_vfa

        images = [nb.load(f) for f in self.inputs.in_files]
        ref = images[0]
        _same_grid(self.inputs.in_files, images)
        signals = np.stack([_volume(img) for img in images], axis=-1)
        b1 = None
        decision = "no B1+ map: nominal flip angles used"
        if self.inputs.b1_map:
            b1, decision = _b1_on_grid(self.inputs.b1_map, self.inputs.b1_units, ref)
        mask = fit_mask(signals.mean(axis=-1), b1)
        fit = fit_vfa(signals, self.inputs.flip_angles_deg, self.inputs.repetition_time_s,
                      b1=b1, mask=mask, method=self.inputs.method)
        cwd = runtime.cwd
        _save_t1_fit(self._results, fit, ref, cwd)
        self._results["reference_image"] = save_nifti(
            os.path.join(cwd, "vfa_reference.nii.gz"), signals[..., -1], like=ref)
        self._results["b1_decision"] = decision
        return runtime


class _FitMP2RAGEInputSpec(BaseInterfaceInputSpec):
    inv1 = File(exists=True, desc="INV1 magnitude")
    inv2 = File(exists=True, desc="INV2 magnitude")
    inv1_phase = File(exists=True, desc="INV1 phase")
    inv2_phase = File(exists=True, desc="INV2 phase")
    phase_units = traits.Str(desc="the phase sidecar's Units, if any")
    unit1 = File(exists=True, desc="scanner UNI image, 0-4095")
    uni_source = traits.Enum("complex", "unit1", "magnitude", mandatory=True,
                             desc="which images give UNI")
    protocol = traits.Dict(mandatory=True, desc="MP2RAGEProtocol fields")
    b1_map = File(exists=True, desc="B1+ map (fraction or percent), any grid of the session")
    b1_units = traits.Str(desc="the B1 map sidecar's Units, if any")


class _FitMP2RAGEOutputSpec(TraitedSpec):
    t1map = File(exists=True, desc="T1, seconds; 0 where invalid")
    r1map = File(exists=True, desc="R1 = 1/T1, 1/s; 0 where invalid")
    valid_mask = File(exists=True, desc="voxels on the monotonic branch of the look-up")
    uni = File(exists=True, desc="UNI contrast in [-0.5, 0.5]")
    b1_decision = traits.Str(desc="how the B1 map units were interpreted")
    uni_decision = traits.Str(desc="how UNI was obtained")


class FitMP2RAGE(SimpleInterface):
    """MP2RAGE T1 by look-up (``qmri.mp2rage``), UNI from complex, scanner or magnitude data."""

    input_spec = _FitMP2RAGEInputSpec
    output_spec = _FitMP2RAGEOutputSpec

    def _run_interface(self, runtime):
        from ..qmri import mp2rage as mp

        protocol = mp.MP2RAGEProtocol(**self.inputs.protocol)
        source = self.inputs.uni_source
        if source == "unit1":
            ref = nb.load(self.inputs.unit1)
            _same_grid([self.inputs.unit1], [ref])
            uni = mp.uni_from_unit1(_volume(ref))
            uni_decision = "UNI from the scanner UNIT1 image (x / 4095 - 0.5)"
        else:
            files = [self.inputs.inv1, self.inputs.inv2]
            if source == "complex":
                files += [self.inputs.inv1_phase, self.inputs.inv2_phase]
            images = [nb.load(f) for f in files]
            _same_grid(files, images)
            ref = images[0]
            mag1, mag2 = _volume(images[0]), _volume(images[1])
        b1, b1_decision = None, "no B1+ map: nominal flip angles used"
        if self.inputs.b1_map:
            b1, b1_decision = _b1_on_grid(self.inputs.b1_map, self.inputs.b1_units, ref)
        mask = None
        if source != "unit1":
            mask = signal_mask(mag2)
        if source == "complex":
            units = self.inputs.phase_units or None
            phase1, decision1 = mp.phase_to_radians(_volume(images[2]), units)
            phase2, _ = mp.phase_to_radians(_volume(images[3]), units)
            uni = mp.uni_from_signals(mp.complex_signal(mag1, phase1),
                                      mp.complex_signal(mag2, phase2))
            uni_decision = f"UNI from complex INV1/INV2 (phase: {decision1})"
        elif source == "magnitude":
            voxel = tuple(float(z) for z in ref.header.get_zooms()[:3])
            signed1, ambiguous = mp.recover_inv1_sign(mag1, mag2, protocol, b1=b1, mask=mask,
                                                      voxel_size_mm=voxel)
            uni = mp.uni_from_signals(signed1, mag2)
            uni_decision = (f"UNI from magnitude-only INV1/INV2; INV1 sign recovered from the "
                            f"smooth-M0 prior in {int(ambiguous.sum())} ambiguous voxels")
        LOGGER.info("%s", uni_decision)
        fit = mp.fit_t1_mp2rage(uni, protocol, b1=b1, mask=mask)
        cwd = runtime.cwd
        _save_t1_fit(self._results, fit, ref, cwd)
        self._results["uni"] = save_nifti(os.path.join(cwd, "UNI.nii.gz"), uni, like=ref)
        self._results["b1_decision"] = b1_decision
        self._results["uni_decision"] = uni_decision
        return runtime


class _SignalMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    exclude_labels = File(exists=True, desc="label map on the same grid to cut out (lesions)")
    exclude_margin_mm = traits.Float(4.0, usedefault=True, desc="dilation of excluded labels")


class _SignalMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True)


class SignalMask(SimpleInterface):
    """Signal mask of an anatomical image, optionally with dilated lesions cut out.

    Used as the registration metric mask: lesions change between sessions (that is the
    signal we measure), so they must not drive the alignment.
    """

    input_spec = _SignalMaskInputSpec
    output_spec = _SignalMaskOutputSpec

    def _run_interface(self, runtime):
        img = nb.load(self.inputs.in_file)
        mask = signal_mask(np.asarray(img.dataobj, np.float32))
        if self.inputs.exclude_labels:
            labels = np.asarray(nb.load(self.inputs.exclude_labels).dataobj)
            if labels.shape != mask.shape:
                raise ValueError(f"{self.inputs.exclude_labels}: grid differs from "
                                 f"{self.inputs.in_file}")
            voxel_mm = float(np.min(img.header.get_zooms()[:3]))
            mask = exclude_dilated_labels(
                mask, labels, margin_iterations(self.inputs.exclude_margin_mm, voxel_mm))
        self._results["out_mask"] = save_nifti(os.path.join(runtime.cwd, "mask.nii.gz"), mask,
                                               like=img, dtype=np.uint8)
        return runtime


class _UptakeInputSpec(BaseInterfaceInputSpec):
    r1_post = File(exists=True, mandatory=True, desc="post-agent R1 in reference space, 1/s")
    r1_pre = File(exists=True, mandatory=True, desc="baseline R1 in reference space, 1/s")
    valid_post = File(exists=True, mandatory=True, desc="post fit validity, resampled (0..1)")
    valid_pre = File(exists=True, mandatory=True, desc="baseline fit validity (0/1)")
    r1_per_mM_per_s = traits.Float(mandatory=True, desc="relaxivity per Gd ion, 1/(mM s)")
    particle_molar_mass_g_per_mol = traits.Float(mandatory=True, desc="agent molar mass, g/mol")
    gd_per_particle = traits.Float(mandatory=True, desc="Gd ions per particle or molecule")


class _UptakeOutputSpec(TraitedSpec):
    delta_r1 = File(exists=True, desc="ΔR1, 1/s")
    gd_conc = File(exists=True, desc="Gd concentration, mM")
    mass_conc = File(exists=True, desc="agent mass concentration, mg/L")
    t1_pre = File(exists=True, desc="baseline T1 in reference space, s")
    t1_post = File(exists=True, desc="post T1 in reference space, s")
    r1_per_mM_per_s = traits.Float(desc="the relaxivity used, 1/(mM s) (for the LoQ in mM)")


class ComputeUptake(SimpleInterface):
    """ΔR1 → mM Gd → mg/L (``qmri.uptake``); NaN where either fit is invalid; negatives kept."""

    input_spec = _UptakeInputSpec
    output_spec = _UptakeOutputSpec

    def _run_interface(self, runtime):
        from ..qmri.uptake import uptake_maps

        pre_img = nb.load(self.inputs.r1_pre)
        maps = uptake_maps(
            pre_img.dataobj, nb.load(self.inputs.r1_post).dataobj,
            nb.load(self.inputs.valid_pre).dataobj, nb.load(self.inputs.valid_post).dataobj,
            r1_per_mM_per_s=self.inputs.r1_per_mM_per_s,
            particle_molar_mass_g_per_mol=self.inputs.particle_molar_mass_g_per_mol,
            gd_per_particle=self.inputs.gd_per_particle)
        for key, data in maps.items():
            self._results[key] = save_nifti(os.path.join(runtime.cwd, f"{key}.nii.gz"), data,
                                            like=pre_img)
        self._results["r1_per_mM_per_s"] = self.inputs.r1_per_mM_per_s
        return runtime


class _EnhancementInputSpec(BaseInterfaceInputSpec):
    post = File(exists=True, mandatory=True, desc="post T1w in reference space")
    pre = File(exists=True, mandatory=True, desc="baseline T1w")


class _EnhancementOutputSpec(TraitedSpec):
    enhancement = File(exists=True, desc="signal enhancement, percent")


class SignalEnhancement(SimpleInterface):
    """SE % = 100 (S_post − S_pre)/S_pre on the T1-weighted GRE (``qmri.uptake``)."""

    input_spec = _EnhancementInputSpec
    output_spec = _EnhancementOutputSpec

    def _run_interface(self, runtime):
        from ..qmri.uptake import masked_signal_enhancement

        pre_img = nb.load(self.inputs.pre)
        se = masked_signal_enhancement(nb.load(self.inputs.post).dataobj, pre_img.dataobj)
        self._results["enhancement"] = save_nifti(
            os.path.join(runtime.cwd, "enhancement.nii.gz"), se, like=pre_img)
        return runtime

