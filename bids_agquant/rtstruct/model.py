"""The objects an RTSTRUCT import works on: structure set, ROIs, contours, image grid.

All geometry is in DICOM patient coordinates (LPS mm). Grids are indexed (i, j, k) =
(column, row, slice), like nibabel, not like pydicom's (row, column) ``pixel_array``; NIfTI
affines are RAS, hence :data:`LPS_TO_RAS`, applied explicitly wherever the two meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Changes the sign of x and y: LPS ↔ RAS (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Contour types that enclose an area (``CLOSED_PLANAR_XOR`` is the explicit XOR variant).
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSED_PLANAR_XOR")


@dataclass(frozen=True)
class Contour:
    """One contour of an ROI.

    Attributes
    ----------
    points_lps : numpy.ndarray
        (n, 3) vertices in DICOM patient coordinates (LPS), mm.
    geometric_type : str
        ``ContourGeometricType`` (``CLOSED_PLANAR``, ``POINT``, ``OPEN_PLANAR``, ...).
    image_uids : tuple of str
        ``ReferencedSOPInstanceUID`` of its ``ContourImageSequence`` (may be empty).
    """

    points_lps: np.ndarray
    geometric_type: str
    image_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ROI:
    """A structure of the structure set (``StructureSetROISequence`` + ``ROIContourSequence``)."""

    number: int
    name: str
    frame_of_reference_uid: str | None
    contours: tuple[Contour, ...]
    interpreted_type: str | None = None


@dataclass(frozen=True)
class StructureSet:
    """What is read from an RTSTRUCT file (geometry in LPS mm)."""

    path: Path
    sop_instance_uid: str
    study_uid: str | None
    series_uid: str | None
    label: str | None
    frame_of_reference_uids: tuple[str, ...]
    referenced_series_uids: tuple[str, ...]
    referenced_image_uids: tuple[str, ...]
    rois: tuple[ROI, ...]


@dataclass(frozen=True)
class ImageGrid:
    """Geometry of the image the contours were drawn on.

    Attributes
    ----------
    shape : tuple of int
        Number of voxels along (i, j, k); for a DICOM series (columns, rows, slices).
    affine_lps : numpy.ndarray
        4×4 matrix from voxel indices (i, j, k) to DICOM patient coordinates (LPS), mm.
    source : str
        Where the geometry comes from (for messages).
    kind : str
        ``"dicom"`` or ``"nifti"``.
    slice_axis : int or None
        Axis whose planes hold the contours: 2 for a DICOM series; for a NIfTI it is found
        from the contours (:func:`~bids_agquant.rtstruct.geometry.find_slice_axis`).
    series_uid, frame_of_reference_uid, study_uid : str or None
        UIDs of the series, when known (DICOM, or a NIfTI sidecar that kept them).
    slice_uids : tuple of str
        ``SOPInstanceUID`` of each slice k (DICOM only).
    """

    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    source: str
    kind: str
    slice_axis: int | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_uid: str | None = None
    slice_uids: tuple[str, ...] = ()

    @property
    def affine_ras(self) -> np.ndarray:
        """Voxel indices → RAS mm (the NIfTI convention)."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along (i, j, k), mm."""
        return np.sqrt((self.affine_lps[:3, :3] ** 2).sum(axis=0))

    def to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (n, 3) of points given in LPS mm (n, 3); no rounding."""
        inverse = np.linalg.inv(self.affine_lps)
        return points_lps @ inverse[:3, :3].T + inverse[:3, 3]


def _text(value) -> str | None:
    """A DICOM or JSON value as text; None when absent or empty (pydicom gives "" for both)."""
    return None if value is None or str(value) == "" else str(value)


def _closed_contours(roi: ROI) -> list[Contour]:
    """Contours that enclose an area (closed planar with at least 3 vertices)."""
    return [c for c in roi.contours
            if c.geometric_type.upper() in CLOSED_TYPES and len(c.points_lps) >= 3]
