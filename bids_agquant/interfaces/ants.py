"""antspyx registration and resampling as Nipype SimpleInterfaces.

ANTs is called through antspyx (no command-line binaries exist on PyPI). Two antspyx pitfalls
are handled here (shared/reference/machine-notes.md §3): ``ants.registration`` ignores a
``random_seed`` keyword, so the seed goes through ``ants.config``; and its default output
prefix is in /tmp, so every call writes inside the node's working directory instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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
from scipy import ndimage

from ..config import DEFAULT_SEED, load_registration_parameters
from ..io import save_nifti


def _ants(num_threads: int, seed: int | None):
    """Import antspyx with a fixed thread count and seed (bit-reproducible with 1 thread)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, num_threads))
    import ants

    ants.config._random_seed = seed
    return ants


def _antspyx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("antspyx")
    except PackageNotFoundError:
        return "unknown"


class _RigidRegistrationInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="reference image")
    moving_image = File(exists=True, mandatory=True, desc="image to align to the reference")
    fixed_mask = File(exists=True, desc="metric mask in the fixed space (lesions excluded)")
    moving_mask = File(exists=True, desc="metric mask in the moving space")
    random_seed = traits.Int(DEFAULT_SEED, usedefault=True, desc="ANTs random seed")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (1 = bit-reproducible)")
    sloppy = traits.Bool(False, usedefault=True, desc="fast, low-accuracy parameters (tests)")


class _RigidRegistrationOutputSpec(TraitedSpec):
    transform = File(exists=True, desc="ANTs rigid transform (fixed → moving point map)")
    warped_image = File(exists=True, desc="moving image resampled into the fixed space")
    mutual_information_before = traits.Float(desc="ANTs MI metric before (lower is better)")
    mutual_information_after = traits.Float(desc="ANTs MI metric after (lower is better)")
    parameters = traits.Dict(desc="the antspyx registration parameters used (for the sidecar)")


class RigidRegistration(SimpleInterface):
    """Rigid Mattes-MI registration of ``moving_image`` to ``fixed_image`` with antspyx."""

    input_spec = _RigidRegistrationInputSpec
    output_spec = _RigidRegistrationOutputSpec

    def _run_interface(self, runtime):
        ants = _ants(self.inputs.num_threads, self.inputs.random_seed)
        fixed = ants.image_read(self.inputs.fixed_image)
        moving = ants.image_read(self.inputs.moving_image)
        parameters = load_registration_parameters(self.inputs.sloppy, min(fixed.spacing))
        kwargs = dict(parameters)
        if self.inputs.fixed_mask:
            kwargs["mask"] = ants.image_read(self.inputs.fixed_mask)
        if self.inputs.moving_mask:
            kwargs["moving_mask"] = ants.image_read(self.inputs.moving_mask)
        self._results["parameters"] = {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()},
            "fixed_voxel_size_mm": float(min(fixed.spacing)),
            "random_seed": self.inputs.random_seed, "num_threads": self.inputs.num_threads,
            "sloppy": bool(self.inputs.sloppy), "antspyx_version": _antspyx_version(),
            "metric_masks": [name for name in ("fixed_mask", "moving_mask")
                             if getattr(self.inputs, name)],
        }
        prefix = os.path.join(runtime.cwd, "reg_")
        result = ants.registration(fixed=fixed, moving=moving, outprefix=prefix, **kwargs)
        transform = os.path.join(runtime.cwd, "transform.mat")
        shutil.copyfile(result["fwdtransforms"][0], transform)
        warped = os.path.join(runtime.cwd, "warped.nii.gz")
        ants.image_write(result["warpedmovout"], warped)
        self._results["transform"] = transform
        self._results["warped_image"] = warped
        self._results["mutual_information_before"] = float(
            ants.image_mutual_information(fixed, ants.resample_image_to_target(moving, fixed))
        )
        self._results["mutual_information_after"] = float(
            ants.image_mutual_information(fixed, result["warpedmovout"])
        )
        return runtime


class _ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    input_image = File(exists=True, mandatory=True)
    reference_image = File(exists=True, mandatory=True, desc="defines the output grid")
    transforms = InputMultiObject(
        File(exists=True), desc="antspyx order: [A, B] maps an output point p to B(A(p))"
    )
    invert = InputMultiObject(traits.Bool, desc="invert each transform (default: none)")
    interpolation = traits.Enum("linear", "bSpline", "genericLabel", "nearestNeighbor",
                                usedefault=True)
    valid_mask = File(exists=True, desc="validity of input_image on its grid: invalid voxels are "
                                        "filled from the nearest valid one before resampling and "
                                        "are 0 again after it")
    out_name = traits.Str("resampled.nii.gz", usedefault=True)


class _ApplyTransformsOutputSpec(TraitedSpec):
    output_image = File(exists=True)


class ApplyTransforms(SimpleInterface):
    """Resample an image onto a reference grid through rigid transforms (antspyx).

    Label maps use ANTs' ``genericLabel`` interpolator, which keeps label identities and does
    not drop thin structures the way nearest neighbour can. Quantitative maps use cubic
    B-spline interpolation (``bSpline``): linear interpolation averages neighbours, which
    blurs a lesion into its surroundings and biased the mean uptake of sub-centimetre lesions
    by about -10 % on the reference dataset. A windowed sinc did as well but took 15 times
    longer (ITK's Lanczos: 4 s per 2 mm volume, and its weights do not sum to one); the cubic
    B-spline reproduces constants exactly. Higher-order kernels overshoot at steps, so with
    ``valid_mask`` the invalid voxels (background, failed fits) are first filled from their
    nearest valid voxel, and output voxels that borrow from invalid ones (the linearly
    resampled mask below 0.999) are set to 0. The output keeps the reference NIfTI affine and
    is float32 (int16 for label interpolation).
    """

    input_spec = _ApplyTransformsInputSpec
    output_spec = _ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        ants = _ants(1, None)
        reference = ants.image_read(self.inputs.reference_image)
        moving = ants.image_read(self.inputs.input_image)
        transforms = list(self.inputs.transforms or [])
        invert = list(self.inputs.invert or [False] * len(transforms))
        if len(invert) != len(transforms):
            raise ValueError("one invert flag per transform is needed")

        def resample(image, interpolation):
            if transforms:
                return ants.apply_transforms(
                    fixed=reference, moving=image, transformlist=transforms,
                    whichtoinvert=invert, interpolator=interpolation,
                ).numpy()
            return ants.resample_image_to_target(image, reference,
                                                 interp_type=interpolation).numpy()

        if self.inputs.valid_mask:
            valid = ants.image_read(self.inputs.valid_mask).numpy() > 0
            if valid.shape != moving.shape:
                raise ValueError(f"{self.inputs.valid_mask}: grid differs from "
                                 f"{self.inputs.input_image}")
            if not valid.any():
                raise ValueError(f"{self.inputs.valid_mask}: no valid voxel to resample")
            nearest = ndimage.distance_transform_edt(~valid, return_distances=False,
                                                     return_indices=True)
            moving = moving.new_image_like(moving.numpy()[tuple(nearest)])
            data = resample(moving, self.inputs.interpolation)
            inside = resample(moving.new_image_like(valid.astype(np.float32)), "linear")
        else:
            data = resample(moving, self.inputs.interpolation)
        if self.inputs.valid_mask:
            data = np.where(inside > 0.999, data, 0.0)
        ref_nii = nb.load(self.inputs.reference_image)
        if self.inputs.interpolation in ("linear", "bSpline"):
            data = data.astype(np.float32)
        else:
            data = np.rint(data).astype(np.int16)
        self._results["output_image"] = save_nifti(
            os.path.join(runtime.cwd, self.inputs.out_name), data, like=ref_nii, dtype=data.dtype)
        return runtime


def ants_transform_to_ras(transform_file: str | Path) -> np.ndarray:
    """4x4 matrix (RAS mm) of an ANTs linear transform file.

    The matrix maps a point of the fixed space to the moving space (ANTs' convention for a
    registration's forward transform). ANTs works in LPS coordinates, NIfTI in RAS; the
    matrix is measured by mapping the origin and the unit vectors (valid for any linear
    transform type ANTs may have written) and conjugated with the LPS↔RAS flip.
    """
    import ants

    tx = ants.read_transform(str(transform_file))
    origin = np.array(tx.apply_to_point((0.0, 0.0, 0.0)))
    lps = np.eye(4)
    lps[:3, 3] = origin
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        lps[:3, axis] = np.array(tx.apply_to_point(tuple(unit))) - origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip
