"""Lesion geometry: volume, equivalent diameter, 3-D and axial Feret diameters, centroid.

The definitions (voxel centres, physical distances through the affine, RECIST 1.1 / RANO-BM
axial slices, the inclusive measurability threshold) are in the :mod:`bids_agquant.lesions`
package docstring.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError

from ..config import DEFAULT_MEASURABLE_THRESHOLD_MM
from ._common import _check_affine, _check_labels, _voxels_by_label

#: Tolerance (mm) applied to the measurability threshold to absorb affine rounding.
MEASURABLE_TOLERANCE_MM = 1e-6

#: Below this number of points, the Feret diameter is computed by brute force.
_BRUTE_FORCE_POINTS = 64

GEOMETRY_COLUMNS = (
    "lesion_id",
    "n_voxels",
    "volume_ml",
    "equiv_diameter_mm",
    "longest_diameter_mm",
    "longest_axial_diameter_mm",
    "measurable",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)


def _max_pairwise_distance(points: np.ndarray, max_block_elements: int = 1 << 22) -> float:
    """Largest Euclidean distance between rows of ``points`` (exact, memory-bounded blocks)."""
    n = points.shape[0]
    if n < 2:
        return 0.0
    block = max(1, max_block_elements // n)
    best_sq = 0.0
    for start in range(0, n, block):
        diff = points[start : start + block, None, :] - points[None, :, :]
        best_sq = max(best_sq, float(np.einsum("ijk,ijk->ij", diff, diff).max()))
    return float(np.sqrt(best_sq))


def _feret_diameter(points: np.ndarray) -> float:
    """Maximum distance between points (3-D Feret diameter over the given points).

    Uses the convex-hull vertices when Qhull can build a 3-D hull; for degenerate sets
    (fewer than 4 points, colinear or coplanar) it falls back to a 2-D hull of the points
    projected on their plane (distances measured in 3-D between the original points), to
    the extremes along the line for colinear sets, and finally to all points.
    """
    n = points.shape[0]
    if n < 2:
        return 0.0
    if n <= _BRUTE_FORCE_POINTS:
        return _max_pairwise_distance(points)
    centred = points - points.mean(axis=0)
    try:
        hull = ConvexHull(centred)
        return _max_pairwise_distance(points[hull.vertices])
    except QhullError:
        pass
    # Degenerate set: find its dimension from the singular values.
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    tol = max(sing[0], 1.0) * 1e-9
    if sing[1] <= tol:  # colinear
        proj = centred @ vt[0]
        return _max_pairwise_distance(points[[int(np.argmin(proj)), int(np.argmax(proj))]])
    if sing[2] <= tol:  # coplanar
        try:
            hull2d = ConvexHull(centred @ vt[:2].T)
            return _max_pairwise_distance(points[hull2d.vertices])
        except QhullError:
            pass
    return _max_pairwise_distance(points)


def _axial_axis(aff: np.ndarray) -> int:
    """Voxel axis whose direction is closest to the world superior (z) axis."""
    directions = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def _axial_feret_diameter(ijk: np.ndarray, xyz: np.ndarray, axis: int) -> float:
    """Largest in-slice Feret diameter (mm) over the slices of voxel axis ``axis``."""
    best = 0.0
    slices = ijk[:, axis]
    for value in np.unique(slices):
        best = max(best, _feret_diameter(xyz[slices == value]))
    return best


def lesion_geometry(
    labels: np.ndarray, affine: np.ndarray,
    measurable_threshold_mm: float = DEFAULT_MEASURABLE_THRESHOLD_MM,
) -> pd.DataFrame:
    """Size, diameters and centroid of every labelled lesion.

    Parameters
    ----------
    labels : numpy.ndarray, shape (X, Y, Z)
        Integer label image; 0 is background, each positive value one lesion (ids need not
        be contiguous). Float images with integral values are accepted.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine in mm (NIfTI qform/sform).
    measurable_threshold_mm : float, optional
        Minimum longest diameter (mm, inclusive) for ``measurable`` (default 10 mm, RECIST /
        RANO-BM).

    Returns
    -------
    pandas.DataFrame
        One row per nonzero label, sorted by id, with columns ``lesion_id`` (int),
        ``n_voxels`` (int), ``volume_ml`` (mL), ``equiv_diameter_mm`` (mm),
        ``longest_diameter_mm`` (mm, 3-D), ``longest_axial_diameter_mm`` (mm, RECIST axial),
        ``measurable`` (bool, from the 3-D diameter), ``centroid_x_mm``,
        ``centroid_y_mm``, ``centroid_z_mm`` (mm, world frame of the affine). Empty (with
        these columns) when there is no lesion. See the :mod:`bids_agquant.lesions`
        package docstring for the definitions; the voxel-centre Feret diameter is about
        one voxel smaller than the physical extent.

    Raises
    ------
    ValueError
        On a non-3-D or non-integer label image, negative labels, a bad affine or a
        negative threshold.
    """
    lab = _check_labels(labels)
    aff = _check_affine(affine)
    threshold = float(measurable_threshold_mm)
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"measurable_threshold_mm must be >= 0, got {measurable_threshold_mm!r}")

    idx, ids, starts = _voxels_by_label(lab)
    n_les = ids.size
    voxel_volume_mm3 = abs(float(np.linalg.det(aff[:3, :3])))

    ijk = np.stack(np.unravel_index(idx, lab.shape), axis=1).astype(np.float64)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    ends = np.append(starts[1:], idx.size) if n_les else starts.copy()
    counts = (ends - starts).astype(np.int64)

    if n_les:
        centroids = np.add.reduceat(xyz, starts, axis=0) / counts[:, None]
    else:
        centroids = np.zeros((0, 3))
    longest = np.array(
        [_feret_diameter(xyz[s:e]) for s, e in zip(starts, ends, strict=True)], dtype=np.float64
    )
    axis = _axial_axis(aff)
    axial = np.array([_axial_feret_diameter(ijk[s:e], xyz[s:e], axis)
                      for s, e in zip(starts, ends, strict=True)], dtype=np.float64)
    volume_mm3 = counts * voxel_volume_mm3

    return pd.DataFrame(
        {
            "lesion_id": ids.astype(np.int64),
            "n_voxels": counts,
            "volume_ml": volume_mm3 / 1000.0,
            "equiv_diameter_mm": np.cbrt(6.0 * volume_mm3 / np.pi),
            "longest_diameter_mm": longest,
            "longest_axial_diameter_mm": axial,
            "measurable": longest >= threshold - MEASURABLE_TOLERANCE_MM,
            "centroid_x_mm": centroids[:, 0],
            "centroid_y_mm": centroids[:, 1],
            "centroid_z_mm": centroids[:, 2],
        },
        columns=list(GEOMETRY_COLUMNS),
    )
