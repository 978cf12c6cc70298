"""Rigid registrations: qMRI images → their session's T1w, and session T1w → baseline T1w."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.ants import RigidRegistration


def registration_mem_gb(fixed_image: str) -> float:
    """Peak memory of one antspyx rigid registration, GB (header only, no data read).

    Measured: 0.45 GB at 2 mm and 1.6 GB at 1 mm for the MNI152 grid (machine-notes.md §3),
    i.e. about 0.3 GB plus 150 bytes per fixed-image voxel.
    """
    import nibabel as nb
    import numpy as np

    try:
        n_voxels = float(np.prod(nb.load(fixed_image).shape[:3]))
    except (OSError, nb.filebasedimages.ImageFileError):
        # A graph built from a plan without image data (tests): the 1 mm MNI-grid figure.
        n_voxels = 182 * 218 * 182
    return round(0.3 + 1.5e-7 * n_voxels, 2)


def init_rigid_registration_wf(
    *, fixed_image: str, moving_image: str | None = None, seed: int, omp_nthreads: int,
    sloppy: bool, mem_gb: float | None = None, name: str = "registration_wf",
):
    """Register ``moving`` to ``fixed`` (rigid, Mattes MI, seeded).

    Inputs
    ------
    moving_image : image to align (if not given as a parameter).
    fixed_mask : metric mask in the fixed space (optional; lesions cut out).

    Outputs
    -------
    transform : ANTs transform mapping fixed-space points to moving-space points.
    warped_image : moving image resampled to the fixed grid (for QC).
    parameters : the antspyx parameters used (recorded in the transform's sidecar).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["moving_image", "fixed_mask"]),
                        name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["transform", "warped_image", "mi_before", "mi_after",
                                      "parameters"]),
        name="outputnode",
    )
    register = pe.Node(
        RigidRegistration(fixed_image=fixed_image, random_seed=seed, num_threads=omp_nthreads,
                          sloppy=sloppy),
        name="register", n_procs=omp_nthreads,
        mem_gb=mem_gb if mem_gb is not None else registration_mem_gb(fixed_image),
    )
    if moving_image is not None:
        register.inputs.moving_image = moving_image
    else:
        workflow.connect(inputnode, "moving_image", register, "moving_image")
    workflow.connect([
        (inputnode, register, [("fixed_mask", "fixed_mask")]),
        (register, outputnode, [("transform", "transform"), ("warped_image", "warped_image"),
                                ("mutual_information_before", "mi_before"),
                                ("mutual_information_after", "mi_after"),
                                ("parameters", "parameters")]),
    ])
    return workflow
