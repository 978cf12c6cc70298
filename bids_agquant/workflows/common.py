"""Resampling nodes shared by the participant sub-workflows."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from ..interfaces.ants import ApplyTransforms

#: How R1 maps reach the reference grid (recorded in the sidecars).
RESAMPLING_R1 = ("ANTs cubic B-spline; invalid voxels filled from the nearest valid one "
                 "before, and set to 0 after")


def resample_node(name: str, *, reference, interpolation: str = "linear",
                  out_name: str = "resampled.nii.gz", **inputs) -> pe.Node:
    """An :class:`ApplyTransforms` node onto the grid of ``reference``."""
    return pe.Node(ApplyTransforms(reference_image=str(reference), interpolation=interpolation,
                                   out_name=out_name, **inputs), name=name, mem_gb=1.0)


def resample_r1_node(name: str, *, reference) -> pe.Node:
    """R1 into the reference grid: cubic B-spline, invalid voxels filled first, then zeroed
    (see :class:`~bids_agquant.interfaces.ants.ApplyTransforms`)."""
    return resample_node(name, reference=reference, interpolation="bSpline",
                         out_name="r1.nii.gz")
