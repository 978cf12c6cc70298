"""Input checks and voxel grouping shared by the per-lesion measures (private)."""

from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be a 3-D label image, got shape {lab.shape}")
    if lab.dtype == bool:
        return lab.astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.issubdtype(lab.dtype, np.floating):
            raise ValueError(f"labels must hold integers, got dtype {lab.dtype}")
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(
                "labels must hold integer values (resample label images with "
                "nearest-neighbour interpolation)"
            )
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    return lab


def _check_affine(affine: np.ndarray) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    if not np.all(np.isfinite(aff)):
        raise ValueError("affine has non-finite values")
    if abs(np.linalg.det(aff[:3, :3])) == 0:
        raise ValueError("affine is singular (zero voxel volume)")
    return aff


def _voxels_by_label(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of labelled voxels sorted by label, the label ids and group starts."""
    flat = lab.ravel()
    idx = np.flatnonzero(flat)
    values = flat[idx]
    order = np.argsort(values, kind="stable")
    idx = idx[order]
    ids, starts = np.unique(values[order], return_index=True)
    return idx, ids, starts


def _equivalent_radii_mm(lab: np.ndarray, aff: np.ndarray) -> np.ndarray:
    """Equivalent-sphere radius (mm) of every label present, in label order."""
    # np.unique, not np.bincount: ids need not be contiguous and a bincount allocates one
    # counter per integer up to the largest id (16 GB for an id of 2**31 - 1).
    counts = np.unique(lab[lab > 0], return_counts=True)[1]
    volume_mm3 = counts * abs(float(np.linalg.det(aff[:3, :3])))
    return np.cbrt(3.0 * volume_mm3 / (4.0 * np.pi))
