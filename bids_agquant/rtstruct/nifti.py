"""Reading NIfTI images: the target grid, or a NIfTI conversion of the referenced series.

A NIfTI of the series (e.g. from dcm2niix) stands in for its DICOM folder: its RAS affine gives
the geometry, and its JSON sidecar the UIDs when the converter kept them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from ..errors import EX_DATAERR, EX_NOINPUT, InputError
from .model import LPS_TO_RAS, ImageGrid, _text

LOGGER = logging.getLogger("bids_agquant")


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
    """The image and its 3-D shape (trailing axes of length 1 dropped); InputError 66 / 65."""
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
    by :func:`~bids_agquant.rtstruct.import_rtstruct`: the sidecar's SeriesInstanceUID when it
    kept one, the number of slices, and that every contour lies in a slice plane of this image.

    Parameters
    ----------
    path : str or os.PathLike
        ``.nii`` or ``.nii.gz`` file; its JSON sidecar, if any, is read for the UIDs.

    Returns
    -------
    ImageGrid
        ``kind="nifti"``, without a slice axis (found later from the contours).

    Raises
    ------
    InputError
        66 when the file does not exist; 65 when it is unreadable or not 3-D.
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
