"""DICOM RTSTRUCT → GTV label map on the grid of a BIDS image.

How it works
------------
1. :func:`read_rtstruct` reads the structure set with pydicom ≥ 3: ROI numbers and names, each
   ROI's frame of reference and its contours (``ContourData``: x, y, z triplets in **DICOM
   patient coordinates, LPS mm**: +x towards the patient's left, +y posterior, +z head).
2. :func:`read_dicom_series` (a DICOM folder) or :func:`read_nifti_grid` (a NIfTI of that same
   series) gives the geometry of the image the contours were drawn on, as a voxel → LPS matrix.
   Only the geometry is read; pixel data are never needed.
3. :func:`rasterise_roi` maps every vertex to *continuous* voxel indices of that grid (no
   rounding), checks that each contour lies in one slice plane (tolerance: a fraction of the
   slice spacing) and inside the image, and fills the polygons of each slice with the
   **even–odd rule over all of that slice's edges**, which is the XOR of the polygons: holes
   and several contours per slice work. Each pixel is sampled ``supersampling``² times, giving
   the fraction of the pixel inside the ROI. Each contour stands for a slab of one slice
   spacing, so the ROI volume is Σ(area) × slice spacing.
4. :func:`resample_fractions` resamples each ROI's fraction map onto the target BIDS image in
   physical space (target voxel → RAS → LPS → planning voxel; trilinear, the map being 0 but
   still interpolated beyond the planning image's edges). :func:`label_map` then keeps, per
   ROI, the N voxels of largest fraction, N being the ROI's volume over the target voxel
   volume (rounded): a per-ROI inclusion threshold near 0.5 that preserves the volume; a voxel
   kept by several ROIs goes to the one covering most of it (one-hot linear + argmax, as the
   "generic label" interpolators do). Arrays are never copied between grids.

The traps the public converters fall into (``shared/reference/rt-and-lesion-features.md`` §1)
and how they are avoided here:

* ``ImageOrientationPatient`` = [X, Y]: X is the direction of increasing **column** index
  (along a row), Y that of increasing **row** index. ``PixelSpacing`` = [Δrow, Δcolumn]: its
  *first* value is the distance between rows, i.e. the step along Y, the *second* value. So
  voxel (c, r, k) sits at ``IPP₀ + X·PixelSpacing[1]·c + Y·PixelSpacing[0]·r + n·Δs·k``
  (rt-utils 1.2.7 swaps the spacings).
* Grids are indexed (i, j, k) = (column, row, slice), like nibabel, whereas pydicom's
  ``pixel_array`` is (row, column); no pixel array is used, so no transposition can be missed
  (platipy passes x as the row argument of ``skimage.draw.polygon`` and clips columns ≥ Rows).
* NIfTI affines are RAS; DICOM is LPS: ``LPS = diag(-1, -1, 1) · RAS``, applied explicitly.
* The slice of a contour is found from *all* its vertices in physical space (not from the
  first vertex, nor from ``ContourImageSequence`` UIDs alone), so oblique series work and a
  contour between slices is an error, not a silently empty or misplaced mask.
* Anything outside the referenced image or the target image, an ROI without contours and an
  ROI that rasterises to no voxel raise :class:`~bids_agquant.bids.InputError` (exit 65):
  there is never a silently empty or truncated mask.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bids import EX_DATAERR, EX_NOINPUT, InputError

LOGGER = logging.getLogger("bids_agquant")

EX_USAGE = 64

#: ROI name patterns selected by default (case-insensitive glob).
DEFAULT_PATTERNS = ("*GTV*",)

#: Changes the sign of x and y: LPS ↔ RAS (it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

#: Contour types that enclose an area (``CLOSED_PLANAR_XOR`` is the explicit XOR variant).
CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSED_PLANAR_XOR")

#: Vertices may sit this far (in voxels) beyond the outer pixel edge: rounding of DS strings.
EDGE_TOLERANCE_VOXELS = 0.01

RASTERISATION_METHOD = (
    "Contour vertices (DICOM LPS mm) mapped to continuous voxel indices of the referenced "
    "series; each contour matched to one slice plane (all vertices within the slice "
    "tolerance); polygons of a slice filled with the even-odd rule (XOR) at {s}x{s} samples "
    "per pixel, each contour standing for one slice spacing; per-ROI fraction maps resampled "
    "onto the target image in physical space (RAS -> LPS, trilinear); each ROI keeps the "
    "round(volume / target voxel volume) voxels of largest fraction (volume-preserving "
    "threshold, see InclusionThreshold), shared voxels going to the larger fraction"
)


# --------------------------------------------------------------------------- data objects
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
        from the contours (:func:`find_slice_axis`).
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


# --------------------------------------------------------------------------- reading
def _text(value) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _dcmread(path: Path, **kwargs):
    """pydicom.dcmread with errors turned into InputError (66 missing, 65 unreadable)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.is_file():
        raise InputError(f"{path}: file not found", EX_NOINPUT)
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as exc:
        raise InputError(f"{path}: not a DICOM file ({exc})", EX_DATAERR) from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: unreadable DICOM file ({exc})", EX_DATAERR) from None


def _contour_points(item, roi_name: str, path: Path) -> np.ndarray:
    data = item.get("ContourData")
    if data is None:
        return np.empty((0, 3))
    try:
        values = np.asarray([float(v) for v in data], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: ROI {roi_name!r} has non-numeric ContourData",
                         EX_DATAERR) from None
    if values.size % 3 or not np.isfinite(values).all():
        raise InputError(f"{path}: ROI {roi_name!r} has malformed ContourData ({values.size} "
                         "values, not finite x, y, z triplets)", EX_DATAERR)
    return values.reshape(-1, 3)


def read_rtstruct(path) -> StructureSet:
    """Read an RTSTRUCT file (pydicom ≥ 3).

    Parameters
    ----------
    path : str or os.PathLike
        The RT Structure Set Storage file.

    Returns
    -------
    StructureSet
        ROIs with their contours in LPS mm, and the UIDs the structure set references.

    Raises
    ------
    InputError
        66 when the file does not exist; 65 when it is not a readable RTSTRUCT.
    """
    path = Path(path)
    ds = _dcmread(path)
    modality = str(ds.get("Modality", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if modality != "RTSTRUCT" and sop_class != RTSTRUCT_SOP_CLASS:
        raise InputError(f"{path}: not an RTSTRUCT (Modality {modality or 'missing'}, "
                         f"SOPClassUID {sop_class or 'missing'})", EX_DATAERR)
    if "StructureSetROISequence" not in ds:
        raise InputError(f"{path}: RTSTRUCT without StructureSetROISequence", EX_DATAERR)

    frames, series, images = [], [], []
    for ref_frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        if ref_frame.get("FrameOfReferenceUID"):
            frames.append(str(ref_frame.FrameOfReferenceUID))
        for study in ref_frame.get("RTReferencedStudySequence", []):
            for ref_series in study.get("RTReferencedSeriesSequence", []):
                if ref_series.get("SeriesInstanceUID"):
                    series.append(str(ref_series.SeriesInstanceUID))
                for image in ref_series.get("ContourImageSequence", []):
                    if image.get("ReferencedSOPInstanceUID"):
                        images.append(str(image.ReferencedSOPInstanceUID))

    interpreted = {}
    for obs in ds.get("RTROIObservationsSequence", []):
        if "ReferencedROINumber" in obs:
            interpreted[int(obs.ReferencedROINumber)] = _text(obs.get("RTROIInterpretedType"))

    contours_by_number: dict[int, list[Contour]] = {}
    names = {int(item.ROINumber): str(item.get("ROIName", "")).strip()
             for item in ds.StructureSetROISequence if "ROINumber" in item}
    for roi_contour in ds.get("ROIContourSequence", []):
        if "ReferencedROINumber" not in roi_contour:
            LOGGER.warning("%s: an ROIContourSequence item has no ReferencedROINumber; "
                           "ignored", path)
            continue
        number = int(roi_contour.ReferencedROINumber)
        name = names.get(number, str(number))
        found = contours_by_number.setdefault(number, [])
        for item in roi_contour.get("ContourSequence", []):
            uids = tuple(str(ref.ReferencedSOPInstanceUID)
                         for ref in item.get("ContourImageSequence", [])
                         if ref.get("ReferencedSOPInstanceUID"))
            found.append(Contour(_contour_points(item, name, path),
                                 str(item.get("ContourGeometricType", "CLOSED_PLANAR")), uids))

    rois = []
    for item in ds.StructureSetROISequence:
        if "ROINumber" not in item:
            LOGGER.warning("%s: a StructureSetROISequence item has no ROINumber; ignored", path)
            continue
        number = int(item.ROINumber)
        rois.append(ROI(number, names[number], _text(item.get("ReferencedFrameOfReferenceUID")),
                        tuple(contours_by_number.get(number, [])), interpreted.get(number)))
    return StructureSet(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=_text(ds.get("StudyInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")),
        label=_text(ds.get("StructureSetLabel")),
        frame_of_reference_uids=tuple(dict.fromkeys(frames)),
        referenced_series_uids=tuple(dict.fromkeys(series)),
        referenced_image_uids=tuple(dict.fromkeys(images)),
        rois=tuple(rois),
    )


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


# --------------------------------------------------------------------------- image geometry
def _floats(value, count: int, what: str, path: Path) -> np.ndarray:
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {what} = {value!r} is not numeric", EX_DATAERR) from None
    if numbers.size != count or not np.isfinite(numbers).all():
        raise InputError(f"{path}: {what} = {value!r} should be {count} finite numbers",
                         EX_DATAERR)
    return numbers


def _scan_series(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    """Image datasets (headers only) of a folder tree, grouped by SeriesInstanceUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[tuple[Path, object]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM (e.g. a README or a NIfTI next to the slices)
        if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds:
            continue  # RTSTRUCT, RTPLAN, DICOMDIR, ...: no image plane
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return series


def _choose_series(folder, series, referenced_series, frame_of_reference) -> str:
    if not series:
        raise InputError(f"{folder}: no DICOM image found", EX_NOINPUT)
    present = sorted(series)
    wanted = [uid for uid in present if uid in set(referenced_series)]
    if wanted:
        return wanted[0]
    if referenced_series:
        raise InputError(f"{folder}: holds series {', '.join(present)}, but the RTSTRUCT "
                         f"references series {', '.join(referenced_series)}: give the folder "
                         "of the series the contours were drawn on", EX_DATAERR)
    # No series reference in the RTSTRUCT: fall back on the frame of reference.
    same_frame = [uid for uid in present
                  if str(series[uid][0][1].get("FrameOfReferenceUID", "")) == frame_of_reference]
    candidates = same_frame if frame_of_reference else present
    if len(candidates) != 1:
        raise InputError(f"{folder}: the RTSTRUCT names no referenced series and the folder "
                         f"holds {len(candidates)} candidate series ({', '.join(present)}); give "
                         "a folder with only the planning series", EX_DATAERR)
    return candidates[0]


def read_dicom_series(folder, *, referenced_series=(), frame_of_reference=None) -> ImageGrid:
    """Geometry (voxel → LPS matrix) of a single-frame DICOM image series.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder (searched recursively) holding the series; other series and non-image files
        may be present.
    referenced_series : sequence of str
        SeriesInstanceUIDs the RTSTRUCT references; one of them must be in ``folder``.
    frame_of_reference : str, optional
        Used to pick the series when the RTSTRUCT references none.

    Returns
    -------
    ImageGrid
        Indexed (column, row, slice), slices sorted along the slice normal
        ``n = X × Y`` (X, Y: the row and column direction cosines of
        ImageOrientationPatient).

    Raises
    ------
    InputError
        66 when no image is found; 65 when the series is not the referenced one, is
        multi-frame, has inconsistent or sheared geometry, duplicate or unevenly spaced slices.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image series folder not found", EX_NOINPUT)
    series = _scan_series(folder)
    uid = _choose_series(folder, series, tuple(referenced_series), frame_of_reference)
    items = series[uid]
    first_path, first = items[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{first_path}: enhanced multi-frame DICOM is not supported; convert "
                         "the series to NIfTI (dcm2niix) and pass the NIfTI", EX_DATAERR)

    iop = _floats(first.ImageOrientationPatient, 6, "ImageOrientationPatient", first_path)
    col_dir, row_dir = iop[:3], iop[3:]  # X: along a row (column index); Y: row index
    if (abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(np.linalg.norm(row_dir) - 1) > 1e-3
            or abs(col_dir @ row_dir) > 1e-3):
        raise InputError(f"{first_path}: ImageOrientationPatient {iop.tolist()} is not two "
                         "orthonormal directions", EX_DATAERR)
    normal = np.cross(col_dir, row_dir)
    # PixelSpacing = [between rows (along Y), between columns (along X)].
    row_spacing, col_spacing = _floats(first.PixelSpacing, 2, "PixelSpacing", first_path)
    rows, cols = int(first.Rows), int(first.Columns)

    positions, uids = [], []
    for path, ds in items:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{path}: {ds.Rows}x{ds.Columns} pixels, but {first_path} has "
                             f"{rows}x{cols}; not one volume", EX_DATAERR)
        if np.abs(_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
                  - iop).max() > 1e-4:
            raise InputError(f"{path}: ImageOrientationPatient differs from {first_path}; "
                             "not one volume", EX_DATAERR)
        if np.abs(_floats(ds.PixelSpacing, 2, "PixelSpacing", path)
                  - (row_spacing, col_spacing)).max() > 1e-4:
            raise InputError(f"{path}: PixelSpacing differs from {first_path}", EX_DATAERR)
        positions.append(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path))
        uids.append(str(ds.get("SOPInstanceUID", "")))
    positions = np.asarray(positions)
    along = positions @ normal
    order = np.argsort(along)
    positions, along = positions[order], along[order]
    uids = [uids[i] for i in order]
    paths = [items[i][0] for i in order]

    if len(along) > 1:
        steps = np.diff(along)
        if steps.min() < 1e-3:
            dup = int(np.argmin(steps))
            raise InputError(f"{paths[dup]} and {paths[dup + 1]}: two images at the same slice "
                             "position (multi-echo or dynamic series?); give a folder (or a "
                             "NIfTI) with a single volume", EX_DATAERR)
        spacing = float(np.median(steps))
        if np.abs(steps - spacing).max() > max(1e-2, 1e-2 * spacing):
            raise InputError(f"{folder}: series {uid} has unevenly spaced slices "
                             f"({steps.min():.3f}–{steps.max():.3f} mm)", EX_DATAERR)
        # Slice origins must move along the normal only: no shear (gantry tilt).
        drift = positions - positions[0] - np.outer(along - along[0], normal)
        if np.linalg.norm(drift, axis=1).max() > 1e-2:
            raise InputError(f"{folder}: series {uid} is sheared (slice origins move in-plane, "
                             "gantry tilt?); not supported", EX_DATAERR)
    else:
        spacing = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 0)
        if spacing <= 0:
            raise InputError(f"{first_path}: a one-slice series needs SliceThickness",
                             EX_DATAERR)

    affine = np.eye(4)
    affine[:3, 0] = col_dir * col_spacing
    affine[:3, 1] = row_dir * row_spacing
    affine[:3, 2] = normal * spacing
    affine[:3, 3] = positions[0]
    return ImageGrid(
        shape=(cols, rows, len(along)),
        affine_lps=affine,
        source=str(folder),
        kind="dicom",
        slice_axis=2,
        series_uid=uid,
        frame_of_reference_uid=_text(first.get("FrameOfReferenceUID")),
        study_uid=_text(first.get("StudyInstanceUID")),
        slice_uids=tuple(uids),
    )


def _sidecar(nifti: Path) -> dict:
    """The JSON sidecar next to a NIfTI (``x.nii.gz`` → ``x.json``), or {}."""
    json_path = Path(re.sub(r"\.nii(\.gz)?$", ".json", str(nifti)))
    if not json_path.is_file():
        return {}
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        LOGGER.warning("%s: unreadable sidecar (%s); ignored", json_path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _load_nifti(path: Path):
    import nibabel as nb

    if not path.is_file():
        raise InputError(f"{path}: file not found", EX_NOINPUT)
    try:
        img = nb.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(f"{path}: unreadable NIfTI ({exc})", EX_DATAERR) from None
    shape = img.shape[:3] if len(img.shape) > 3 and all(n == 1 for n in img.shape[3:]) \
        else img.shape
    if len(shape) != 3:
        raise InputError(f"{path}: a 3-D image is needed, shape is {img.shape}", EX_DATAERR)
    return img, tuple(int(n) for n in shape)


def read_nifti_grid(path) -> ImageGrid:
    """Geometry of a NIfTI conversion of the referenced series (e.g. by dcm2niix).

    The NIfTI is *assumed* to be the series the contours were drawn on (same frame of
    reference): its affine (RAS) replaces the DICOM geometry. What can be checked is checked
    by :func:`import_rtstruct`: the sidecar's SeriesInstanceUID when it kept one, the number of
    slices, and that every contour lies in a slice plane of this image.
    """
    path = Path(path)
    img, shape = _load_nifti(path)
    meta = _sidecar(path)
    return ImageGrid(
        shape=shape,
        affine_lps=LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64),
        source=str(path),
        kind="nifti",
        series_uid=_text(meta.get("SeriesInstanceUID")),
        frame_of_reference_uid=_text(meta.get("FrameOfReferenceUID")),
        study_uid=_text(meta.get("StudyInstanceUID")),
    )


# --------------------------------------------------------------------------- rasterisation
def _closed_contours(roi: ROI) -> list[Contour]:
    """Contours that enclose an area (closed planar with at least 3 vertices)."""
    return [c for c in roi.contours
            if c.geometric_type.upper() in CLOSED_TYPES and len(c.points_lps) >= 3]


def find_slice_axis(rois, grid: ImageGrid, slice_tolerance: float = 0.25) -> int:
    """The axis of ``grid`` whose planes hold every contour of ``rois``.

    For a DICOM grid this is the slice axis (2) by construction, and it is verified; for a
    NIfTI of the series it is the axis along which every contour has a constant index.

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


def _even_odd_fraction(polygons: list[np.ndarray], shape: tuple[int, int],
                       samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each pixel of a 2-D grid inside ``polygons`` under the even–odd rule.

    Parameters
    ----------
    polygons : list of numpy.ndarray
        (n, 2) vertices in continuous pixel indices (axis 0, axis 1); pixel (p, q) covers
        [p − ½, p + ½) × [q − ½, q + ½). All polygons of one slice together: a point is inside
        when a ray crosses an odd number of edges of *any* of them, i.e. the XOR of the
        polygons (holes cut out, disjoint polygons all kept, orientation irrelevant).
    shape : tuple of int
        Pixels along (axis 0, axis 1).
    samples : int
        Samples per pixel along each axis (``samples``² per pixel).

    Returns
    -------
    fractions : numpy.ndarray
        float32 over the polygons' bounding box of pixels.
    first : numpy.ndarray
        Index of that box's first pixel.
    """
    points = np.concatenate(polygons)
    lo = np.maximum(np.floor(points.min(axis=0) + 0.5).astype(int), 0)
    hi = np.minimum(np.floor(points.max(axis=0) + 0.5).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return np.zeros((0, 0), dtype=np.float32), lo
    starts = points
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])  # closing edge included
    offsets = (np.arange(samples) + 0.5) / samples - 0.5
    xs = (np.arange(lo[0], hi[0])[:, None] + offsets).ravel()  # sample coordinates, axis 0
    ys = (np.arange(lo[1], hi[1])[:, None] + offsets).ravel()  # sample coordinates, axis 1
    x1, y1, x2, y2 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    # Scanlines along axis 0 at each sample ys: an edge crosses when its ends straddle ys
    # (half-open, so a vertex on the line counts once; horizontal edges never cross).
    crosses = (y1[None, :] > ys[:, None]) != (y2[None, :] > ys[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (ys[:, None] - y1) * (x2 - x1) / (y2 - y1)
    inside = np.zeros((xs.size, ys.size), dtype=bool)
    for row in np.flatnonzero(crosses.any(axis=1)):
        crossings = np.sort(x_cross[row, crosses[row]])
        inside[:, row] = np.searchsorted(crossings, xs, side="right") % 2 == 1
    counts = inside.reshape(hi[0] - lo[0], samples, hi[1] - lo[1], samples)
    return counts.mean(axis=(1, 3), dtype=np.float32), lo


def rasterise_roi(roi: ROI, grid: ImageGrid, *, slice_axis: int | None = None,
                  slice_tolerance: float = 0.25, supersampling: int = 5) -> np.ndarray:
    """Fraction (0–1) of each voxel of ``grid`` inside ``roi``.

    Parameters
    ----------
    roi : ROI
        Its closed planar contours are used (others are ignored with a warning).
    grid : ImageGrid
        The image the contours were drawn on.
    slice_axis : int, optional
        Default: ``grid.slice_axis`` or :func:`find_slice_axis`.
    slice_tolerance : float
        How far (fraction of the slice spacing) a vertex may lie from its slice plane.
    supersampling : int
        Samples per pixel along each in-plane axis.

    Returns
    -------
    numpy.ndarray
        float32, ``grid.shape``.

    Raises
    ------
    InputError
        65: no closed contour, a contour off the slice planes or outside the image, or
        nothing rasterised.
    """
    box, first = _rasterise(roi, grid, slice_axis, slice_tolerance, supersampling)
    fractions = np.zeros(grid.shape, dtype=np.float32)
    fractions[tuple(slice(int(a), int(a) + n) for a, n in zip(first, box.shape, strict=True))] \
        = box
    return fractions


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


def _rasterise(roi: ROI, grid: ImageGrid, slice_axis: int | None, slice_tolerance: float,
               supersampling: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rasterise_roi` over the ROI's bounding box only (a planning CT is large):
    returns the box and the grid index of its first voxel."""
    closed = _closed_contours(roi)
    if not closed:
        raise InputError(f"{grid.source}: ROI {roi.name!r} (number {roi.number}) has no closed "
                         "planar contour; it would rasterise to nothing", EX_DATAERR)
    if len(closed) < len(roi.contours):
        LOGGER.warning("ROI %r: %d contour(s) that enclose no area (POINT, OPEN_* or fewer than "
                       "3 points) ignored", roi.name, len(roi.contours) - len(closed))
    axis = slice_axis if slice_axis is not None else find_slice_axis([roi], grid,
                                                                    slice_tolerance)
    plane = [a for a in range(3) if a != axis]
    plane_shape = (int(grid.shape[plane[0]]), int(grid.shape[plane[1]]))
    filled = {k: _even_odd_fraction(polygons, plane_shape, supersampling)
              for k, polygons in _slice_polygons(roi, grid, axis, slice_tolerance).items()}
    lo = np.min([first for _box, first in filled.values()], axis=0)
    hi = np.max([first + box.shape for box, first in filled.values()], axis=0)
    ks = sorted(filled)
    first = np.zeros(3, dtype=int)
    first[axis], first[plane] = ks[0], lo
    size = np.zeros(3, dtype=int)
    size[axis], size[plane] = ks[-1] - ks[0] + 1, np.maximum(hi - lo, 0)
    fractions = np.zeros(tuple(size), dtype=np.float32)
    for k, (box, start) in filled.items():
        index: list = [slice(None)] * 3
        index[axis] = k - ks[0]
        index[plane[0]] = slice(int(start[0] - lo[0]), int(start[0] - lo[0] + box.shape[0]))
        index[plane[1]] = slice(int(start[1] - lo[1]), int(start[1] - lo[1] + box.shape[1]))
        fractions[tuple(index)] = box
    if not fractions.any():
        raise InputError(f"{grid.source}: ROI {roi.name!r} (number {roi.number}) rasterises to "
                         "nothing (its contours enclose no pixel sample)", EX_DATAERR)
    return fractions, first


def _slab_points(roi: ROI, grid: ImageGrid, axis: int) -> np.ndarray:
    """Contour vertices shifted ± half a slice along the slice normal (LPS mm): the corners of
    the slabs the contours stand for."""
    step = grid.affine_lps[:3, axis]
    points = np.concatenate([c.points_lps for c in _closed_contours(roi)])
    return np.concatenate([points - step / 2, points + step / 2])


def resample_fractions(fractions: np.ndarray, grid: ImageGrid, target_affine_ras: np.ndarray,
                       target_shape, first=(0, 0, 0)) -> np.ndarray:
    """Resample a fraction map from ``grid`` onto a target grid in physical space.

    Each target voxel centre goes RAS → LPS → continuous voxel index of ``grid``, where the
    fractions are interpolated trilinearly (0 outside ``grid``). Only the bounding box of the
    ROI is computed. Beyond the edges of ``grid`` the map is 0 *and still interpolated*
    (``grid-constant``), so a contour on the first or last slice keeps its half-slice slab and
    one touching the image edge its outer half pixel.

    Parameters
    ----------
    fractions : numpy.ndarray
        On ``grid`` (from :func:`rasterise_roi`).
    grid : ImageGrid
    target_affine_ras : numpy.ndarray
        4×4 voxel → RAS mm matrix of the target (a NIfTI affine).
    target_shape : tuple of int
    first : sequence of int
        Grid index of ``fractions[0, 0, 0]`` when ``fractions`` is a box of the grid.
    """
    from scipy import ndimage as ndi

    target_shape = tuple(int(n) for n in target_shape)
    box_to_grid = np.eye(4)
    box_to_grid[:3, 3] = first
    target_to_box = (np.linalg.inv(box_to_grid) @ np.linalg.inv(grid.affine_lps) @ LPS_TO_RAS
                     @ target_affine_ras)
    out = np.zeros(target_shape, dtype=np.float32)
    nonzero = np.argwhere(fractions > 0)
    if nonzero.size == 0:
        return out
    # Corners of the ROI box (one voxel margin for the interpolation) in target indices.
    lo, hi = nonzero.min(axis=0) - 1, nonzero.max(axis=0) + 1
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])], dtype=np.float64)
    box_to_target = np.linalg.inv(target_to_box)
    in_target = corners @ box_to_target[:3, :3].T + box_to_target[:3, 3]
    t_lo = np.clip(np.floor(in_target.min(axis=0)).astype(int) - 1, 0, target_shape)
    t_hi = np.clip(np.ceil(in_target.max(axis=0)).astype(int) + 2, 0, target_shape)
    if np.any(t_hi <= t_lo):
        return out
    box = tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi, strict=True))
    offset = target_to_box[:3, :3] @ t_lo + target_to_box[:3, 3]
    out[box] = ndi.affine_transform(
        fractions, target_to_box[:3, :3], offset=offset, output_shape=tuple(t_hi - t_lo),
        output=np.float32, order=1, mode="grid-constant", cval=0.0, prefilter=False)
    return out


def label_map(resampled: list[np.ndarray], voxel_counts: list[int] | None = None,
              threshold: float = 0.5) -> tuple[np.ndarray, list[float]]:
    """Integer labels 1..N from per-ROI fraction maps on one grid.

    Parameters
    ----------
    resampled : list of numpy.ndarray
        Fraction maps (0–1) of the ROIs on the target grid.
    voxel_counts : list of int, optional
        Voxels each ROI should cover: its volume on the referenced series over the target
        voxel volume, rounded. Each ROI then keeps that many voxels, those of largest
        fraction: a per-ROI threshold close to 0.5 that preserves the volume. A fixed 0.5
        threshold does not for small ROIs (a 12 mm disc centred on a pixel of a 0.9 × 1.3 mm
        grid gains a symmetric ring of pixels: +4.6 %).
    threshold : float
        Fixed inclusion threshold, used when ``voxel_counts`` is None.

    Returns
    -------
    labels : numpy.ndarray
        0 background; a voxel kept by several ROIs goes to the one covering most of it (ties
        to the lower label). uint8 up to 255 ROIs, uint16 beyond.
    thresholds : list of float
        Lowest fraction kept per ROI (the effective inclusion threshold).
    """
    kept, thresholds = [], []
    for index, fractions in enumerate(resampled):
        if voxel_counts is None:
            kept.append(fractions >= threshold)
            thresholds.append(threshold)
            continue
        flat = fractions.ravel()
        candidates = np.flatnonzero(flat > 0)
        count = min(int(voxel_counts[index]), candidates.size)
        mask = np.zeros(flat.size, dtype=bool)
        # Stable sort: equal fractions are taken in array order, so the result is repeatable.
        best = candidates[np.argsort(-flat[candidates], kind="stable")[:count]]
        mask[best] = True
        kept.append(mask.reshape(fractions.shape))
        thresholds.append(float(flat[best[-1]]) if count else 1.0)
    stack = np.stack([np.where(mask, f, -1.0) for mask, f in zip(kept, resampled, strict=True)])
    dtype = np.uint8 if len(resampled) < 256 else np.uint16
    labels = np.where(np.max(stack, axis=0) > 0, np.argmax(stack, axis=0) + 1, 0)
    return labels.astype(dtype), thresholds


# --------------------------------------------------------------------------- checks
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


# --------------------------------------------------------------------------- pipeline
def load_referenced_grid(image_series, structure_set: StructureSet) -> ImageGrid:
    """The referenced image as a DICOM folder or a NIfTI file (see :func:`read_nifti_grid`)."""
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


def _check_overlaps(rois: list[ROI], resampled: list[np.ndarray], max_overlap: float,
                    notes: list[str]) -> None:
    """Disjoint ROIs cannot both reach 0.5 in a voxel (their fractions add up to ≤ 1), so a
    shared voxel means the ROIs overlap; a large overlap means nested ROIs (e.g. a
    'GTV_total' around 'GTV1'), which a one-label-per-lesion map cannot represent."""
    masks = [r >= 0.5 for r in resampled]
    for a in range(len(rois)):
        for b in range(a + 1, len(rois)):
            shared = int((masks[a] & masks[b]).sum())
            if not shared:
                continue
            smaller = max(1, min(int(masks[a].sum()), int(masks[b].sum())))
            if shared > max_overlap * smaller:
                raise InputError(f"ROIs {rois[a].name!r} and {rois[b].name!r} overlap in "
                                 f"{shared} voxels ({100 * shared / smaller:.0f} % of the "
                                 "smaller): one label per lesion is impossible; select "
                                 "distinct lesions with --roi", EX_DATAERR)
            message = (f"ROIs {rois[a].name!r} and {rois[b].name!r} overlap in {shared} "
                       "voxel(s); each went to the ROI covering more of it")
            LOGGER.warning("%s", message)
            notes.append(message)
