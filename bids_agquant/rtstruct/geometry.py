"""Where the contours lie: slice axis, slice planes, and the checks that refuse to guess.

The slice of a contour is found from *all* its vertices in physical space (not from the first
vertex, nor from ``ContourImageSequence`` UIDs alone), so oblique series work and a contour
between slices is an error. Frames of reference, referenced series and the extent of the ROIs
against the referenced and target images are checked here: anything that would give a
misplaced, empty or truncated mask raises :class:`~bids_agquant.errors.InputError` (exit 65).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import EX_DATAERR, InputError
from .model import LPS_TO_RAS, ROI, ImageGrid, StructureSet, _closed_contours, _text
from .nifti import _sidecar

LOGGER = logging.getLogger("bids_agquant")

#: Vertices may sit this far (in voxels) beyond the outer pixel edge: rounding of DS strings.
EDGE_TOLERANCE_VOXELS = 0.01


def find_slice_axis(rois, grid: ImageGrid, slice_tolerance: float = 0.25) -> int:
    """The axis of ``grid`` whose planes hold every contour of ``rois``.

    For a DICOM grid this is the slice axis (2) by construction, and it is verified; for a
    NIfTI of the series it is the axis along which every contour has a constant index.

    Parameters
    ----------
    rois : iterable of ROI
        Their closed planar contours are used.
    grid : ImageGrid
        The image the contours were drawn on.
    slice_tolerance : float
        How far (fraction of the voxel size along the axis) a vertex may lie from the plane.

    Returns
    -------
    int
        The axis (0, 1 or 2) of ``grid``.

    Raises
    ------
    InputError
        65 when no axis holds all the contours within ``slice_tolerance`` (a fraction of the
        voxel size along that axis): the contours were not drawn on this image's slices.
    """
    spreads = np.zeros(3)
    for roi in rois:
        for contour in _closed_contours(roi):
            index = grid.to_index(contour.points_lps)
            spreads = np.maximum(spreads, np.ptp(index, axis=0))
    axis = grid.slice_axis if grid.slice_axis is not None else int(np.argmin(spreads))
    if spreads[axis] > 2 * slice_tolerance:
        mm = spreads[axis] * grid.spacing_mm[axis]
        raise InputError(f"{grid.source}: contours are not parallel to the slices of this "
                         f"image (a contour spans {mm:.2f} mm across the slice direction); "
                         "the RTSTRUCT was drawn on another series or orientation", EX_DATAERR)
    return axis


def _slice_polygons(roi: ROI, grid: ImageGrid, axis: int,
                    slice_tolerance: float) -> dict[int, list[np.ndarray]]:
    """In-plane continuous indices of each closed contour, grouped by the slice it lies on;
    checks that every vertex is on that slice plane and inside the image."""
    plane = [a for a in range(3) if a != axis]
    shape = np.asarray(grid.shape)
    spacing = grid.spacing_mm
    per_slice: dict[int, list[np.ndarray]] = {}
    for contour in _closed_contours(roi):
        index = grid.to_index(contour.points_lps)
        k = int(np.rint(index[:, axis].mean()))
        off = np.abs(index[:, axis] - k).max()
        where = f"ROI {roi.name!r}, contour at {np.round(contour.points_lps[0], 2).tolist()} mm"
        if off > slice_tolerance:
            raise InputError(f"{grid.source}: {where} lies {off * spacing[axis]:.2f} mm from the "
                             f"nearest slice plane (tolerance {slice_tolerance * spacing[axis]:.2f}"
                             " mm): drawn on another series or between slices", EX_DATAERR)
        if not 0 <= k < shape[axis]:
            raise InputError(f"{grid.source}: {where} is outside the image (slice {k} of "
                             f"0–{shape[axis] - 1})", EX_DATAERR)
        inplane = index[:, plane]
        low = -0.5 - EDGE_TOLERANCE_VOXELS
        high = shape[plane] - 0.5 + EDGE_TOLERANCE_VOXELS
        beyond = np.maximum(low - inplane, inplane - high).max(axis=0)
        if beyond.max() > 0:
            mm = float((np.maximum(beyond, 0) * spacing[plane]).max())
            raise InputError(f"{grid.source}: {where} extends {mm:.2f} mm outside the image "
                             f"({shape[plane[0]]}x{shape[plane[1]]} voxels in-plane)",
                             EX_DATAERR)
        per_slice.setdefault(k, []).append(inplane)
    return per_slice


def _slab_points(roi: ROI, grid: ImageGrid, axis: int) -> np.ndarray:
    """Contour vertices shifted ± half a slice along the slice normal (LPS mm): the corners of
    the slabs the contours stand for."""
    step = grid.affine_lps[:3, axis]
    points = np.concatenate([c.points_lps for c in _closed_contours(roi)])
    return np.concatenate([points - step / 2, points + step / 2])


def _check_references(structure_set: StructureSet, rois: list[ROI], grid: ImageGrid,
                      notes: list[str]) -> None:
    """Frame of reference and series of the RTSTRUCT against the referenced image."""
    if grid.frame_of_reference_uid:
        for roi in rois:
            if roi.frame_of_reference_uid and roi.frame_of_reference_uid != \
                    grid.frame_of_reference_uid:
                raise InputError(f"{structure_set.path}: ROI {roi.name!r} is in frame of "
                                 f"reference {roi.frame_of_reference_uid}, but {grid.source} is "
                                 f"in {grid.frame_of_reference_uid}: the contour coordinates "
                                 "do not belong to this image", EX_DATAERR)
    if grid.kind == "nifti":
        if grid.series_uid and structure_set.referenced_series_uids and \
                grid.series_uid not in structure_set.referenced_series_uids:
            raise InputError(f"{grid.source}: its sidecar names series {grid.series_uid}, but "
                             "the RTSTRUCT references "
                             f"{', '.join(structure_set.referenced_series_uids)}", EX_DATAERR)
        if not grid.series_uid:
            notes.append(f"{grid.source} is assumed to be the referenced series (no "
                         "SeriesInstanceUID in its sidecar); checked geometrically only")


def _check_slice_count(structure_set: StructureSet, grid: ImageGrid, axis: int,
                       notes: list[str]) -> None:
    """A NIfTI of the series cannot have fewer slices than the RTSTRUCT lists images."""
    listed = len(structure_set.referenced_image_uids)
    slices = grid.shape[axis]
    if grid.kind != "nifti" or not listed:
        return
    if listed > slices:
        raise InputError(f"{grid.source}: {slices} slices, but the RTSTRUCT lists {listed} "
                         "images of its referenced series: not the same series (or not a "
                         "single volume of it)", EX_DATAERR)
    if listed < slices:
        notes.append(f"the RTSTRUCT lists {listed} referenced images for {slices} slices of "
                     f"{grid.source}; slice count not verifiable")


def _check_contour_images(roi: ROI, grid: ImageGrid, notes: list[str]) -> None:
    """Cross-check ContourImageSequence UIDs against the geometric slice match (DICOM)."""
    if grid.kind != "dicom" or not grid.slice_uids:
        return
    slice_of = {uid: k for k, uid in enumerate(grid.slice_uids)}
    mismatched = 0
    for contour in _closed_contours(roi):
        refs = [slice_of[u] for u in contour.image_uids if u in slice_of]
        if refs:
            k = int(np.rint(grid.to_index(contour.points_lps)[:, 2].mean()))
            mismatched += int(k not in refs)
    if mismatched:
        message = (f"ROI {roi.name!r}: {mismatched} contour(s) reference an image other than "
                   "the slice they lie on; the geometry was used")
        LOGGER.warning("%s", message)
        notes.append(message)


def _check_inside_target(roi: ROI, grid: ImageGrid, axis: int, affine_ras: np.ndarray,
                         shape, target: Path) -> None:
    """Every slab corner of the ROI must lie inside the target image (no truncation)."""
    points_ras = _slab_points(roi, grid, axis) @ LPS_TO_RAS[:3, :3].T
    inverse = np.linalg.inv(affine_ras)
    index = points_ras @ inverse[:3, :3].T + inverse[:3, 3]
    low = -0.5 - EDGE_TOLERANCE_VOXELS
    high = np.asarray(shape) - 0.5 + EDGE_TOLERANCE_VOXELS
    if (index < low).any() or (index > high).any():
        raise InputError(f"{target}: ROI {roi.name!r} extends outside this image; its label "
                         "map would be truncated (is it in the same scanner space as the "
                         "referenced series?)", EX_DATAERR)


def _check_target_frame(structure_set: StructureSet, grid: ImageGrid, target: Path,
                        notes: list[str]) -> None:
    """The target must share the referenced series' frame of reference (DESIGN §4: the
    contour lives in the scanner space of its session). Checked when its sidecar kept UIDs."""
    meta = _sidecar(target)
    frame = _text(meta.get("FrameOfReferenceUID"))
    expected_frame = grid.frame_of_reference_uid or next(iter(
        structure_set.frame_of_reference_uids), None)
    if frame and expected_frame and frame != expected_frame:
        raise InputError(f"{target}: frame of reference {frame}, but the contours are in "
                         f"{expected_frame}: they would need a registration, not a regrid",
                         EX_DATAERR)
    study = _text(meta.get("StudyInstanceUID"))
    expected_study = grid.study_uid or structure_set.study_uid
    if study and expected_study and study != expected_study:
        raise InputError(f"{target}: from study {study}, but the contours belong to study "
                         f"{expected_study} (another scanner session): they would need a "
                         "registration, not a regrid", EX_DATAERR)
    if not frame and not study:
        notes.append(f"{target.name} is assumed to share the frame of reference of the "
                     "referenced series (its sidecar has no FrameOfReferenceUID or "
                     "StudyInstanceUID)")
