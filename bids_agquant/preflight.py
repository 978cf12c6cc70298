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
    if tp.b1 is not None:
        images += [(f, f"B1+ ({tp.b1.suffix})") for f in tp.b1.files]
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
        hint = ""
        if len(shape) == 4 and shape[3] == 1:
            hint = " (a single volume stored as 4-D: drop the last axis)"
        elif len(shape) == 4 and role == "MP2RAGE":
            hint = (f" ({shape[3]} volumes in one file, as some scanner exports store the "
                    "inversions or magnitude/phase together: BIDS expects one 3-D file per "
                    "inversion and part, *_inv-1_part-mag_MP2RAGE, *_inv-1_part-phase_MP2RAGE, "
                    "*_inv-2_part-mag_MP2RAGE, …)")
        elif len(shape) == 4 and role.startswith("B1"):
            hint = (" (BIDS expects one 3-D file per image of the B1+ collection, e.g. "
                    "acq-anat / acq-famp for TB1TFL, acq-tr1 / acq-tr2 for TB1AFI)")
        raise InputError(f"{path}: {role} image has shape {shape}; one 3-D volume is "
                         f"expected{hint}", EX_DATAERR)
    if min(shape) < 1:
        raise InputError(f"{path}: {role} image is empty (shape {shape})", EX_DATAERR)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, ValueError for short files
        raise InputError(f"{path}: {role} image data cannot be read, the file is corrupt or "
                         f"truncated ({type(exc).__name__}: {exc})", EX_DATAERR) from None
    if np.iscomplexobj(data):
        raise InputError(f"{path}: {role} image holds complex numbers ({data.dtype}); BIDS "
                         "stores a complex image as two real files, part-mag and part-phase "
                         "(e.g. *_inv-1_part-mag_MP2RAGE.nii.gz and *_inv-1_part-phase_MP2RAGE"
                         ".nii.gz)", EX_DATAERR)
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"{path}: {role} image has data type {data.dtype}; real numbers are "
                         "expected", EX_DATAERR)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad and role.startswith("B1"):
            # Vendor and toolbox B1+ maps mark unmeasured voxels with NaN: no B1+ there (0),
            # which the coverage check then judges.
            LOGGER.info("%s: %d NaN/Inf voxel(s) of %d read as 'no B1+ here'", path, bad,
                        data.size)
        elif bad:
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
    candidates = [(p, role) for p, role in timepoint_images(own[0])
                  if not role.startswith("B1")]
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


def _method_head(tp: Timepoint, method: str, images: dict[Path, nb.Nifti1Image]):
    """Grid and head mask of one T1 method's images: the VFA flips' mean, the INV2 magnitude,
    or (UNIT1 alone, whose background is noise) the timepoint's T1w; None without any."""
    from .qmri.masks import signal_mask

    if method == "vfa":
        ref = images[tp.vfa.files[0]]
        signal = np.mean([np.asarray(images[f].dataobj, np.float32) for f in tp.vfa.files],
                         axis=0)
    elif tp.mp2rage.inv2 is not None:
        ref = images[tp.mp2rage.inv2]
        signal = np.asarray(ref.dataobj, np.float32)
    elif tp.t1w is not None:
        ref = images[tp.t1w]
        signal = np.asarray(ref.dataobj, np.float32)
    else:
        return None
    return ref, signal_mask(signal)


#: Relative bias of VFA R1 per relative B1+ error (R1 ∝ B1² in the small-angle regime).
NO_B1_WARNING = ("no B1+ map: the VFA fit uses the nominal flip angles; R1 scales about as "
                 "B1², so a B1+ of 0.9 (1.1) biases R1 and ΔR1 by about -19 % (+21 %)")


def check_b1(plan: ParticipantPlan, units_override: str | None = None,
             images: dict[Path, nb.Nifti1Image] | None = None) -> None:
    """Compute every B1+ map of ``plan`` and check it against the heads it corrects.

    After the units decision the median B1 inside each T1 method's head mask must lie in
    :data:`~bids_agquant.qmri.b1.PLAUSIBLE_MEDIAN_FRACTION` and the map must cover at least
    :data:`~bids_agquant.qmri.b1.MIN_HEAD_COVERAGE` of it; else InputError (65) naming the
    file, the median and the fixes. The decision, its warnings (a units guess is a WARNING
    line of its own) and the numbers found are recorded on the plan's B1 sources.
    """
    from .b1maps import b1_on_grid, compute_b1, fraction_image
    from .qmri.b1 import MIN_HEAD_COVERAGE, PLAUSIBLE_MEDIAN_FRACTION, b1_plausibility

    images = dict(images or {})  # the images check_plan already opened
    done: dict[int, object] = {}
    for tp in plan.timepoints:
        if tp.b1 is None:
            if tp.vfa is not None:
                LOGGER.warning("sub-%s %s: %s", plan.subject, tp.label, NO_B1_WARNING)
            continue
        source = tp.b1
        if id(source) not in done:
            b1 = compute_b1(source, units_override if source.suffix == "TB1map" else None)
            source.decision, source.warnings = b1.decision, list(b1.warnings)
            LOGGER.info("sub-%s %s: %s", plan.subject, source.main_file.name,
                        b1.decision.removeprefix("WARNING: "))
            if b1.decision.startswith("WARNING"):
                LOGGER.warning("sub-%s %s: %s", plan.subject, source.main_file, b1.decision)
            for text in b1.warnings:
                LOGGER.warning("sub-%s %s: %s", plan.subject, source.main_file, text)
            done[id(source)] = fraction_image(b1)
        for method in tp.methods:
            for path in (tp.vfa.files if method == "vfa" else tp.mp2rage.files):
                images.setdefault(path, nb.load(path))
            if tp.t1w is not None:
                images.setdefault(tp.t1w, nb.load(tp.t1w))
            head = _method_head(tp, method, images)
            if head is None:
                LOGGER.warning("sub-%s %s: no image outlines the head for %s; the B1+ map's "
                               "coverage is not checked", plan.subject, tp.label, method)
                continue
            ref, mask = head
            found = b1_plausibility(b1_on_grid(done[id(source)], ref), mask)
            check = (f"{tp.label} {method}: median B1+ {found.median:.3g} in the head, "
                     f"{100 * found.coverage:.1f} % of the head covered")
            if check not in source.checks:
                source.checks.append(check)
            if not found.ok:
                lo, hi = PLAUSIBLE_MEDIAN_FRACTION
                fixes = ("--b1-units fraction|percent|degrees-x10|per-mille overrides the units "
                         "decision" if source.suffix == "TB1map" else
                         "check the sidecar values (FlipAngle, RepetitionTime, InversionTime, "
                         "NumberShots) of these files")
                if found.coverage < MIN_HEAD_COVERAGE:
                    fixes = ("acquire the B1+ map over the whole head (field of view) of the T1 "
                             f"images, or check its header geometry; {fixes}")
                raise InputError(
                    f"{source.main_file}: implausible B1+ map for {tp.label} ({method}): "
                    f"{'; '.join(found.problems())} (expected a median in {lo:g}-{hi:g} and "
                    f"at least {100 * MIN_HEAD_COVERAGE:g} % of the head covered; {source.decision}"
                    f"); {fixes}; or remove the map to fit without B1+ correction", EX_DATAERR)


def check_plan(plan: ParticipantPlan, config=None) -> None:
    """Read every input image of ``plan`` and its contours; raise InputError(65) on a problem.

    Also checks the B1+ maps (:func:`check_b1`, with ``config.b1_units``) and warns about
    what will be skipped because participants.tsv lacks a value.
    """
    images = {path: load_volume(path, role) for path, role in plan_images(plan)}
    for tp in [plan.baseline, *plan.posts]:
        _check_timepoint_grids(tp, images)
    check_contours(plan, images)
    check_b1(plan, getattr(config, "b1_units", None), images)
    if plan.posts and not plan.is_placebo:
        missing = [key for key, value in (("dose_mg_per_kg", plan.dose_mg_per_kg),
                                          ("weight_kg", plan.weight_kg)) if value is None]
        if missing:
            LOGGER.warning("sub-%s: participants.tsv has no %s: %%ID/g and dose-normalised "
                           "features are skipped", plan.subject, " or ".join(missing))
