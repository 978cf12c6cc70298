"""The import pipeline: RTSTRUCT + referenced series + target image → :class:`ImportResult`."""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EX_DATAERR, EX_NOINPUT, EX_USAGE, InputError
from .dicom import read_dicom_series, read_rtstruct
from .geometry import (
    _check_contour_images,
    _check_inside_target,
    _check_references,
    _check_slice_count,
    _check_target_frame,
    find_slice_axis,
)
from .model import ROI, ImageGrid, StructureSet
from .nifti import _load_nifti, read_nifti_grid
from .rasterise import _check_overlaps, _rasterise, label_map, resample_fractions

LOGGER = logging.getLogger("bids_agquant")

#: ROI name patterns selected by default (case-insensitive glob).
DEFAULT_PATTERNS = ("*GTV*",)


@dataclass
class ImportResult:
    """A structure set rasterised onto a target image (labels 1..N in ``rois`` order)."""

    labels: np.ndarray
    affine_ras: np.ndarray
    rois: list[ROI]
    structure_set: StructureSet
    grid: ImageGrid
    target_image: Path
    planning_volumes_ml: list[float]
    volumes_ml: list[float]
    n_voxels: list[int]
    slice_tolerance: float
    supersampling: int
    thresholds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def roi_table(self) -> list[dict]:
        """One dict per label: index, ROI number and name, sizes (for sidecars and logs)."""
        rows = []
        for index, roi in enumerate(self.rois, start=1):
            rows.append({
                "index": index,
                "ROINumber": roi.number,
                "ROIName": roi.name,
                "RTROIInterpretedType": roi.interpreted_type,
                "NumberOfContours": len(roi.contours),
                "VolumeReferencedSeries_ml": round(self.planning_volumes_ml[index - 1], 6),
                "Volume_ml": round(self.volumes_ml[index - 1], 6),
                "NumberOfVoxels": self.n_voxels[index - 1],
                "InclusionThreshold": round(self.thresholds[index - 1], 4)
                if self.thresholds else None,
            })
        return rows


def _matcher(pattern: str):
    """``re:<regex>`` (searched anywhere, case-insensitive) or a case-insensitive glob."""
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:], re.IGNORECASE)
        except re.error as exc:
            raise InputError(f"--roi {pattern!r}: invalid regular expression ({exc})",
                             EX_USAGE) from None
        return lambda name: regex.search(name) is not None
    folded = pattern.casefold()
    return lambda name: fnmatch.fnmatchcase(name.casefold(), folded)


def select_rois(structure_set: StructureSet, patterns=DEFAULT_PATTERNS) -> list[ROI]:
    """The ROIs whose name matches any pattern, in ``ROINumber`` order.

    Parameters
    ----------
    structure_set : StructureSet
    patterns : sequence of str
        Case-insensitive globs matched against the whole ROI name (``*GTV*``), or regular
        expressions prefixed with ``re:`` and searched anywhere in the name (``re:^GTV_\\d+$``).

    Returns
    -------
    list of ROI
        The matching ROIs, sorted by ``ROINumber`` (the order of the labels).

    Raises
    ------
    InputError
        66 when no ROI matches (the message lists the ROI names of the file); 64 for an
        invalid regular expression.
    """
    matchers = [_matcher(p) for p in patterns]
    chosen = [roi for roi in sorted(structure_set.rois, key=lambda r: r.number)
              if any(match(roi.name) for match in matchers)]
    if not chosen:
        available = ", ".join(repr(r.name) for r in structure_set.rois) or "none"
        raise InputError(f"{structure_set.path}: no ROI matches {list(patterns)}; ROIs in the "
                         f"file: {available}", EX_NOINPUT)
    seen: dict[str, int] = {}
    for roi in chosen:
        seen[roi.name.casefold()] = seen.get(roi.name.casefold(), 0) + 1
    duplicates = [name for name, count in seen.items() if count > 1]
    if duplicates:
        LOGGER.warning("%s: several selected ROIs share a name (%s); labels follow ROINumber",
                       structure_set.path, ", ".join(duplicates))
    return chosen


def load_referenced_grid(image_series, structure_set: StructureSet) -> ImageGrid:
    """The geometry of the referenced image, given as a DICOM folder or a NIfTI file.

    Parameters
    ----------
    image_series : str or os.PathLike
        DICOM folder (:func:`~bids_agquant.rtstruct.dicom.read_dicom_series`, choosing the
        series the RTSTRUCT references) or ``.nii``/``.nii.gz`` file
        (:func:`~bids_agquant.rtstruct.nifti.read_nifti_grid`).
    structure_set : StructureSet
        Gives the referenced series and frame of reference to look for in a folder.

    Returns
    -------
    ImageGrid

    Raises
    ------
    InputError
        66 when it does not exist; 64 when it is neither a folder nor a NIfTI; as the readers.
    """
    image_series = Path(image_series)
    if image_series.is_dir():
        frame = structure_set.frame_of_reference_uids[0] \
            if structure_set.frame_of_reference_uids else None
        return read_dicom_series(image_series,
                                 referenced_series=structure_set.referenced_series_uids,
                                 frame_of_reference=frame)
    if re.search(r"\.nii(\.gz)?$", image_series.name):
        return read_nifti_grid(image_series)
    if not image_series.exists():
        raise InputError(f"{image_series}: referenced image series not found", EX_NOINPUT)
    raise InputError(f"{image_series}: the referenced image must be a DICOM folder or a "
                     ".nii/.nii.gz file", EX_USAGE)


def import_rtstruct(rtstruct, image_series, target_image, *, patterns=DEFAULT_PATTERNS,
                    slice_tolerance: float = 0.25, supersampling: int = 5,
                    max_overlap: float = 0.10) -> ImportResult:
    """Rasterise the GTV ROIs of an RTSTRUCT onto the grid of a target (BIDS) image.

    Parameters
    ----------
    rtstruct : str or os.PathLike
        RTSTRUCT file.
    image_series : str or os.PathLike
        The series the contours were drawn on: a DICOM folder, or a NIfTI of that series
        (e.g. from dcm2niix; assumed to be the same series, checked as far as possible).
    target_image : str or os.PathLike
        NIfTI whose grid the labels are written on (e.g. the session's T1w). It must be in the
        same scanner space (frame of reference) as the referenced series.
    patterns : sequence of str
        ROI name patterns (:func:`select_rois`); default ``("*GTV*",)``.
    slice_tolerance : float
        Allowed distance of a vertex from its slice plane, as a fraction of the slice spacing.
    supersampling : int
        In-plane samples per pixel and axis for the fraction maps.
    max_overlap : float
        Largest overlap of two ROIs on the target grid, as a fraction of the smaller one, that
        is resolved by the largest fraction (with a note) rather than refused.

    Returns
    -------
    ImportResult
        Labels 1..N in ``ROINumber`` order on the target grid, plus volumes and provenance.

    Raises
    ------
    InputError
        With exit code 64 (bad pattern), 65 (bad data: unreadable or mismatched files,
        contours outside the image, empty ROIs, nested ROIs) or 66 (missing file or ROI).
    """
    if not 0 < slice_tolerance < 0.5:
        raise ValueError("slice_tolerance must be in (0, 0.5) slice spacings")
    if supersampling < 1:
        raise ValueError("supersampling must be at least 1")
    target_image = Path(target_image)
    structure_set = read_rtstruct(rtstruct)
    rois = select_rois(structure_set, patterns)
    grid = load_referenced_grid(image_series, structure_set)
    notes: list[str] = []
    _check_references(structure_set, rois, grid, notes)
    axis = find_slice_axis(rois, grid, slice_tolerance)
    _check_slice_count(structure_set, grid, axis, notes)
    target, target_shape = _load_nifti(target_image)
    target_affine = np.asarray(target.affine, dtype=np.float64)
    _check_target_frame(structure_set, grid, target_image, notes)

    planning_voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    target_voxel_ml = float(abs(np.linalg.det(target_affine[:3, :3]))) / 1000.0
    planning_ml, resampled = [], []
    for roi in rois:
        _check_contour_images(roi, grid, notes)
        fractions, first = _rasterise(roi, grid, axis, slice_tolerance, supersampling)
        _check_inside_target(roi, grid, axis, target_affine, target_shape, target_image)
        planning_ml.append(float(fractions.sum(dtype=np.float64)) * planning_voxel_ml)
        resampled.append(resample_fractions(fractions, grid, target_affine, target_shape, first))
    wanted = [round(volume / target_voxel_ml) for volume in planning_ml]
    for roi, volume, count in zip(rois, planning_ml, wanted, strict=True):
        if count == 0:
            raise InputError(f"{target_image}: ROI {roi.name!r} rasterises to no voxel of this "
                             f"image ({volume * 1000:.2f} mm³, less than half a voxel of "
                             f"{target_voxel_ml * 1000:.2f} mm³)", EX_DATAERR)
    _check_overlaps(rois, resampled, max_overlap, notes)
    labels, thresholds = label_map(resampled, wanted)
    counts = [int((labels == index).sum()) for index in range(1, len(rois) + 1)]
    for roi, count, threshold in zip(rois, counts, thresholds, strict=True):
        if count == 0:
            raise InputError(f"{target_image}: ROI {roi.name!r} rasterises to no voxel of this "
                             "image (all of its voxels were taken by other ROIs)", EX_DATAERR)
        if threshold < 0.25:
            notes.append(f"ROI {roi.name!r} is thin for the target voxels: voxels covered down "
                         f"to {threshold:.2f} were needed to keep its volume")
    return ImportResult(
        labels=labels,
        affine_ras=target_affine,
        rois=rois,
        structure_set=structure_set,
        grid=grid,
        target_image=target_image,
        planning_volumes_ml=planning_ml,
        volumes_ml=[n * target_voxel_ml for n in counts],
        n_voxels=counts,
        slice_tolerance=slice_tolerance,
        supersampling=supersampling,
        thresholds=thresholds,
        notes=notes,
    )
