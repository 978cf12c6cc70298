"""Reading the DICOM files with pydicom (≥ 3): the RTSTRUCT and its referenced image series.

Of the image series only the headers are read (``stop_before_pixels``): its geometry is all the
import needs, so no pixel array, and no (row, column) transposition, is ever involved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import EX_DATAERR, EX_NOINPUT, InputError
from .model import ROI, Contour, ImageGrid, StructureSet, _text

LOGGER = logging.getLogger("bids_agquant")

#: SOPClassUID of RT Structure Set Storage.
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


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
