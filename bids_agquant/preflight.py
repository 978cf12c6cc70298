"""Pre-flight checks of a participant's input images and contours, before any processing.

A Nipype node that meets a truncated file or a NaN half an hour into a run produces a crash
file deep in the work directory; the same problem found here produces one line naming the
file and what is wrong, with the DESIGN.md §7 exit code (65 bad data), and nothing written.
Every image a plan uses is read once in full: a truncated ``.nii.gz`` only shows itself when
decompressed to the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
import numpy as np

from .errors import EX_DATAERR, InputError
from .plan import ParticipantPlan, Timepoint

LOGGER = logging.getLogger("bids_agquant")

#: Tolerance (mm) when comparing voxel centres: scanner headers round to about 1e-4 mm.
_GRID_TOLERANCE_MM = 1e-3


def timepoint_images(tp: Timepoint) -> list[tuple[Path, str]]:
    """Every input image of one timepoint with its role (``T1w``, ``VFA``, ``MP2RAGE``,
    ``B1``)."""
    images: list[tuple[Path, str]] = []
    if tp.t1w is not None:
        images.append((tp.t1w, "T1w"))
    if tp.vfa is not None:
        images += [(f, "VFA") for f in tp.vfa.files]
    if tp.mp2rage is not None:
        images += [(f, "MP2RAGE") for f in tp.mp2rage.files]
    if tp.b1map is not None:
        images.append((tp.b1map, "B1"))
    return images


def plan_images(plan: ParticipantPlan) -> list[tuple[Path, str]]:
    """Every input image of ``plan`` with its role, each once (a B1 map may serve twice)."""
    images = [image for tp in [plan.baseline, *plan.posts] for image in timepoint_images(tp)]
    return list(dict.fromkeys(images))


def load_volume(path: Path, role: str) -> nb.Nifti1Image:
    """Load one 3-D input volume completely; raise InputError(65) naming the file if unusable.

    Parameters
    ----------
    path : Path
        NIfTI file.
    role : str
        What the image is used as (for the message), e.g. ``"VFA"``.

    Returns
    -------
    nibabel.Nifti1Image
        The image (header and data proxy; the data were read once and found finite).
    """
    try:
        img = nb.load(path)
    except Exception as exc:  # nibabel raises several types for a bad header
        raise InputError(f"{path}: not a readable NIfTI image ({exc})", EX_DATAERR) from None
    shape = img.shape
    if len(shape) != 3:
        hint = (" (a single volume stored as 4-D: drop the last axis)"
                if len(shape) == 4 and shape[3] == 1 else "")
        raise InputError(f"{path}: {role} image has shape {shape}; one 3-D volume is "
                         f"expected{hint}", EX_DATAERR)
    if min(shape) < 1:
        raise InputError(f"{path}: {role} image is empty (shape {shape})", EX_DATAERR)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, ValueError for short files
        raise InputError(f"{path}: {role} image data cannot be read, the file is corrupt or "
                         f"truncated ({type(exc).__name__}: {exc})", EX_DATAERR) from None
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(f"{path}: {role} image has data type {data.dtype}; real numbers are "
                         "expected", EX_DATAERR)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{path}: {role} image has {bad} NaN/Inf voxel(s) of {data.size}; "
                             "every voxel must be a finite number (set unmeasured voxels to 0)",
                             EX_DATAERR)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: {role} image has an invalid affine (singular or non-finite "
                         "voxel-to-scanner matrix)", EX_DATAERR)
    return img


def _same_grid(a: nb.Nifti1Image, b: nb.Nifti1Image) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine,
                                                      atol=_GRID_TOLERANCE_MM)


def _check_timepoint_grids(tp: Timepoint, images: dict[Path, nb.Nifti1Image]) -> None:
    """Images of one acquisition (VFA flips; MP2RAGE parts) must share one voxel grid.

    T1w, B1 and the T1-mapping images of a timepoint may each have their own grid: they are
    placed by their headers and registered. The images combined voxel by voxel in one fit
    cannot: interpolating phase images or flips of different grids would bias the fit.
    """
    for name, files in (("VFA", tp.vfa.files if tp.vfa else []),
                        ("MP2RAGE", tp.mp2rage.files if tp.mp2rage else [])):
        for path in files[1:]:
            if not _same_grid(images[files[0]], images[path]):
                raise InputError(
                    f"{path}: {name} image is on a different voxel grid (shape "
                    f"{images[path].shape}) from {files[0].name} (shape "
                    f"{images[files[0]].shape}); the images of one {name} acquisition are "
                    "fitted voxel by voxel and must share one grid", EX_DATAERR)


def _lesion_labels(data: np.ndarray, kind: str) -> np.ndarray:
    if kind == "mask":
        from scipy import ndimage

        labels, _ = ndimage.label(data > 0)
        return labels
    return np.rint(data).astype(np.int64)


def check_contours(plan: ParticipantPlan, images: dict[Path, nb.Nifti1Image]) -> None:
    """The contour file is non-empty and lies inside the field of view of its session.

    Every labelled voxel centre is mapped through the scanner coordinates into each image of
    the contours' own timepoint; the contours must fall wholly inside at least one of them.
    None containing any labelled voxel means a grid that belongs to no image of that session
    (a planning-CT grid, a wrong session); a partial overlap means lesions cut by the edge of
    the field of view, whose volume and statistics would be wrong.
    """
    contours = plan.contours
    if contours is None:
        return
    img = load_volume(contours.file, "contour")
    labels = _lesion_labels(np.asanyarray(img.dataobj), contours.kind)
    if labels.min() < 0:
        raise InputError(f"{contours.file}: negative label values; lesions are numbered 1, 2, …",
                         EX_DATAERR)
    ijk = np.argwhere(labels > 0)
    if ijk.size == 0:
        raise InputError(f"{contours.file}: the contour file has no labelled voxel (all "
                         "background); no lesion to measure", EX_DATAERR)
    points = nb.affines.apply_affine(img.affine, ijk)
    timepoints = [plan.baseline, *plan.posts]
    own = [tp for tp in timepoints
           if (tp.session, tp.ceagent) == (contours.session, contours.ceagent)] or [plan.baseline]
    candidates = [(p, role) for p, role in timepoint_images(own[0]) if role != "B1"]
    best_path, best_inside = None, None
    for path, _ in candidates:
        target = images[path]
        vox = nb.affines.apply_affine(np.linalg.inv(target.affine), points)
        inside = np.all((vox > -0.5) & (vox < np.asarray(target.shape[:3]) - 0.5), axis=1)
        if best_inside is None or inside.sum() > best_inside.sum():
            best_path, best_inside = path, inside
        if inside.all():
            return
    if best_inside is None or not best_inside.any():
        names = ", ".join(p.name for p, _ in candidates) or "none"
        raise InputError(f"{contours.file}: the contours lie outside every image of "
                         f"{own[0].label} (checked: {names}); they are on a grid that "
                         "matches no session image (wrong session, or a planning-CT grid?)",
                         EX_DATAERR)
    outside = labels[tuple(ijk[~best_inside].T)]
    raise InputError(f"{contours.file}: lesion label(s) {sorted(set(outside.tolist()))} extend "
                     f"outside the field of view of {best_path.name} "
                     f"({int((~best_inside).sum())} voxel(s)); a cut lesion's volume and "
                     "statistics would be wrong", EX_DATAERR)


def check_plan(plan: ParticipantPlan) -> None:
    """Read every input image of ``plan`` and its contours; raise InputError(65) on a problem.

    Also warns about what will be skipped because participants.tsv lacks a value.
    """
    images = {path: load_volume(path, role) for path, role in plan_images(plan)}
    for tp in [plan.baseline, *plan.posts]:
        _check_timepoint_grids(tp, images)
    check_contours(plan, images)
    if plan.posts and not plan.is_placebo:
        missing = [key for key, value in (("dose_mg_per_kg", plan.dose_mg_per_kg),
                                          ("weight_kg", plan.weight_kg)) if value is None]
        if missing:
            LOGGER.warning("sub-%s: participants.tsv has no %s: %%ID/g and dose-normalised "
                           "features are skipped", plan.subject, " or ".join(missing))
