"""Writing files: atomically where a reader could mistake a partial file for a result, and
one NIfTI writer (:func:`save_nifti`) used by every part of the app.

Finished files get the permissions any other new file of the user would get (0666 minus the
umask): ``mkstemp`` creates them readable by their owner only, and a results folder is shared
by a team.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from functools import cache
from pathlib import Path

import numpy as np

_UMASK_LOCK = threading.Lock()


@cache
def process_umask() -> int:
    """The process umask, read once on first use (not at import).

    Linux states it in ``/proc/self/status``, which reads it without changing it; elsewhere
    ``os.umask`` can only be read by setting it, which is done once under a lock.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _temporary(path: Path, suffix: str = ".tmp") -> str:
    """A new hidden temporary file beside ``path`` (same file system: rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return tmp


def _publish(tmp: str, path: Path) -> None:
    """Give a finished temporary file normal permissions and move it to its final name."""
    os.chmod(tmp, 0o666 & ~process_umask())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that a reader never sees a partial file."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (temporary file in the destination folder)."""
    dst = Path(dst)
    tmp = _temporary(dst)
    try:
        shutil.copyfile(src, tmp)
        _publish(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_nifti(path, data, *, like=None, affine=None, dtype=np.float32, atomic: bool = False,
               header_fields: dict | None = None, intent: str | None = None):
    """Write ``data`` as NIfTI-1 and return the path (a ``str``, as Nipype outputs are).

    Parameters
    ----------
    path : str or Path
        Output file (``.nii`` or ``.nii.gz``); its folder is created.
    data : array_like
        Voxel values, cast to ``dtype``.
    like : nibabel.Nifti1Image, optional
        Image whose header and affine (scanner geometry, qform/sform codes included) the
        output keeps; the usual case, the output lies on an input's grid.
    affine : ndarray (4, 4), optional
        Voxel-to-scanner matrix (mm) when there is no ``like`` image: a fresh header with
        qform and sform set to it (code 1, scanner) and spatial units mm.
    dtype : numpy dtype
        Stored data type; scaling is reset (slope 1, intercept 0) so values are stored as is.
    atomic : bool
        Write under a temporary hidden name and rename when complete, with normal
        permissions: for files written straight into a dataset (outside a Nipype node).
    header_fields : dict, optional
        Header fields to set (e.g. ``{"descrip": b"...", "cal_max": 3}``).
    intent : str, optional
        NIfTI intent code name (e.g. ``"label"``).
    """
    import nibabel as nb

    if (like is None) == (affine is None):
        raise ValueError("save_nifti needs exactly one of like= or affine=")
    values = np.asarray(data, dtype=dtype)
    if like is not None:
        header = like.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1, 0)
        image = nb.Nifti1Image(values, like.affine, header)
    else:
        image = nb.Nifti1Image(values, affine)
        image.header.set_data_dtype(dtype)
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm", "sec")
    if intent is not None:
        image.header.set_intent(intent)
    for key, value in (header_fields or {}).items():
        image.header[key] = value
    path = Path(path)
    if not atomic:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.to_filename(str(path))
        return str(path)
    tmp = _temporary(path, suffix="".join(path.suffixes) or ".nii.gz")
    try:
        image.to_filename(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def is_inside(path: Path, parent: Path) -> bool:
    """Whether ``path`` is ``parent`` or lies below it (symlinks resolved)."""
    try:
        Path(path).resolve().relative_to(Path(parent).resolve())
    except ValueError:
        return False
    return True
