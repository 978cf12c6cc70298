"""Right-left and anterior-posterior line profiles through the lesion centroids."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from ._common import _check_affine, _check_labels, _equivalent_radii_mm


def _world_axis(aff: np.ndarray, world: int) -> tuple[int, float]:
    """Voxel axis closest to world axis ``world`` (0 = R, 1 = A) and its sign."""
    directions = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(directions[world])))
    return axis, float(np.sign(directions[world, axis]))


def line_profiles(
    labels: np.ndarray,
    affine: np.ndarray,
    values: np.ndarray,
    *,
    ring_mm: float = 4.0,
    extent: float = 2.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Right-left and anterior-posterior profiles through every lesion centroid.

    As in NanoBrainMets, values outside the lesion are replaced by the mean of the normal
    tissue immediately surrounding it (a ring of ``ring_mm`` around the lesion, other
    lesions excluded), so that a profile shows the lesion against its own background.

    Parameters
    ----------
    labels : numpy.ndarray
        Lesion labels (0 = background).
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine (RAS mm); the profiles run along the voxel axes closest to
        world R and A.
    values : numpy.ndarray
        Map to profile (e.g. mass concentration, mg/L); NaN ignored in the ring mean.
    ring_mm : float
        Width of the surrounding-normal ring, mm.
    extent : float
        Half-length of each profile in units of the lesion's equivalent radius.

    Returns
    -------
    profiles : pandas.DataFrame
        Long format: ``lesion_id``, ``direction`` (``RL``, ``AP``), ``position_mm`` (from the
        centroid, positive towards R or A), ``value`` (the map inside the lesion, the ring
        mean outside), ``inside`` (bool).
    summary : pandas.DataFrame
        Per lesion: ``ring_mean`` and ``peak_to_valley_ratio`` (largest / smallest value
        inside the lesion along both profiles; n/a when the smallest is <= 0).
    """
    lab = _check_labels(labels)
    aff = _check_affine(affine)
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape != lab.shape:
        raise ValueError(f"values have shape {vals.shape}, labels {lab.shape}")
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    ids = np.unique(lab[lab > 0])
    rows, summary = [], []
    for lesion_id, radius_mm in zip(ids, _equivalent_radii_mm(lab, aff), strict=True):
        member = lab == lesion_id
        ijk = np.argwhere(member)
        centre = np.rint(ijk.mean(axis=0)).astype(int)
        # Ring: within ring_mm of the lesion, outside every lesion (EDT in a box).
        reach = np.ceil(ring_mm / spacing).astype(int) + 1
        lo = np.maximum(ijk.min(axis=0) - reach, 0)
        hi = np.minimum(ijk.max(axis=0) + reach + 1, lab.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        distance = ndimage.distance_transform_edt(~member[box], sampling=spacing)
        ring = (distance > 0) & (distance <= ring_mm) & (lab[box] == 0)
        ring_values = vals[box][ring]
        ring_values = ring_values[np.isfinite(ring_values)]
        ring_mean = float(ring_values.mean()) if ring_values.size else np.nan
        inside_values = []
        for direction, world in (("RL", 0), ("AP", 1)):
            axis, sign = _world_axis(aff, world)
            half = int(np.ceil(extent * max(radius_mm, spacing[axis]) / spacing[axis]))
            steps = np.arange(-half, half + 1)
            index = np.repeat(centre[None, :], steps.size, axis=0)
            index[:, axis] += steps
            keep = (index[:, axis] >= 0) & (index[:, axis] < lab.shape[axis])
            index, steps = index[keep], steps[keep]
            inside = member[tuple(index.T)]
            profile = np.where(inside, vals[tuple(index.T)], ring_mean)
            inside_values.append(profile[inside])
            for step, value, flag in zip(steps, profile, inside, strict=True):
                rows.append((lesion_id, direction, sign * step * spacing[axis],
                             float(value), bool(flag)))
        inner = np.concatenate(inside_values)
        inner = inner[np.isfinite(inner)]
        ratio = (float(inner.max() / inner.min()) if inner.size and inner.min() > 0
                 else np.nan)
        summary.append((lesion_id, ring_mean, ratio))
    profiles = pd.DataFrame(rows, columns=["lesion_id", "direction", "position_mm", "value",
                                           "inside"])
    summary_table = pd.DataFrame(summary, columns=["lesion_id", "ring_mean",
                                                   "peak_to_valley_ratio"])
    return profiles, summary_table
