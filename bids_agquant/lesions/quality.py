"""Limit of quantification, healthy-tissue controls and the quality rules of the tables.

The blank of the LoQ is normal tissue (true ΔR1 = 0); the healthy-tissue control regions
are NanoRad's negative control; the rules turn a lesion mean and its LoQ into the
``quantification`` status and a control's means into ``control_failed``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from ._common import _check_affine, _check_labels, _equivalent_radii_mm

#: ICH Q2 multipliers of the blank's standard deviation: limit of detection and of
#: quantification.
LOD_K = 3.3
LOQ_K = 10.0

#: Margin (voxels) between the lesions and the normal tissue used for the LoQ and the
#: controls: the lesion edge (partial volume, resampling) is not normal tissue.
NORMAL_TISSUE_MARGIN_VOXELS = 2

#: |SE mean| (%) above which a healthy-tissue control region fails.
CONTROL_SE_TOLERANCE_PERCENT = 10.0

#: Values of the lesion table's ``quantification`` column.
QUANTIFIED, BELOW_LOQ, NOT_ASSESSED = "quantified", "<LoQ", "n/a"


def limit_of_quantification(
    delta_r1_per_s: np.ndarray,
    normal_mask: np.ndarray,
    n_voxels: Iterable[int],
    *,
    k: float = LOQ_K,
) -> np.ndarray:
    """Lower limit of quantification of a lesion-mean ΔR1, for lesions of given sizes.

    The "blank" is normal tissue, where the true ΔR1 is 0: the standard deviation of the
    mean ΔR1 over normal-tissue regions of the lesion's size (cubes of ``n_voxels``,
    normalised convolution inside ``normal_mask``) measures everything that makes a lesion
    mean scatter around its truth -- noise, its spatial correlation after resampling, and
    residual misregistration -- and ``LoQ = k * SD`` (ICH Q2, k = 10).

    Parameters
    ----------
    delta_r1_per_s : numpy.ndarray
        ΔR1 map, 1/s (NaN where unknown).
    normal_mask : numpy.ndarray of bool
        Normal tissue (no lesion, with a margin), same grid.
    n_voxels : iterable of int
        Lesion sizes, voxels.
    k : float
        Multiplier of the SD (10 for LoQ, 3.3 for a limit of detection).

    Returns
    -------
    numpy.ndarray
        LoQ of the mean ΔR1 (1/s) for each size; NaN when fewer than 20 region means fit in
        the normal tissue.

    Raises
    ------
    ValueError
        If a size is negative or not finite.
    """
    dr1 = np.asarray(delta_r1_per_s, dtype=np.float64)
    mask = np.asarray(normal_mask, bool) & np.isfinite(dr1)
    values = np.where(mask, dr1, 0.0)
    weights = mask.astype(np.float64)
    sizes = [float(n) for n in n_voxels]
    # a negative size crashed with a TypeError (complex cube root), NaN with int(NaN)
    if not all(np.isfinite(n) and n >= 0 for n in sizes):
        raise ValueError(f"n_voxels must be finite sizes >= 0, got {sizes}")
    sides = [max(1, round(n ** (1.0 / 3.0))) for n in sizes]
    by_side = {}
    for side in set(sides):  # lesions of one cube size share the (full-volume) filtering
        if side > min(dr1.shape, default=0):
            # no cube of this side fits in the grid (NaN below anyway); filtering with a
            # huge window would only exhaust the memory
            by_side[side] = np.nan
            continue
        total = ndimage.uniform_filter(values, size=side, mode="constant")
        count = ndimage.uniform_filter(weights, size=side, mode="constant")
        full = mask & (count > 0.999)  # cubes lying entirely in normal tissue
        if full.sum() < 20:
            by_side[side] = np.nan
            continue
        means = total[full] / count[full]
        # Robust SD (MAD): a few vessels or edge voxels must not set the limit.
        mad = np.median(np.abs(means - np.median(means)))
        by_side[side] = k * 1.4826 * mad
    return np.asarray([by_side[side] for side in sides], dtype=np.float64)


def control_rois(
    labels: np.ndarray,
    tissue_mask: np.ndarray,
    affine: np.ndarray,
    *,
    n_rois: int = 3,
    radius_mm: float | None = None,
    margin_mm: float = 10.0,
) -> np.ndarray:
    """Healthy-tissue reference regions: ``n_rois`` spheres away from every lesion.

    NanoRad checked three metastasis-free regions of similar size in every patient for the
    absence of enhancement and of T1 change. The spheres have the radius of the median
    lesion's equivalent sphere (at least 4 mm) unless ``radius_mm`` is given; their centres
    lie at least ``radius + margin_mm`` from every lesion voxel and ``radius`` inside the
    tissue mask, chosen deterministically by farthest-point sampling (the first as close to
    the tissue centroid as allowed, each next one as far as possible from those chosen).

    Parameters
    ----------
    labels : numpy.ndarray
        Lesion labels (0 = background).
    tissue_mask : numpy.ndarray of bool
        Where a control may lie (brain or head signal), same grid.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine, mm.
    n_rois, radius_mm, margin_mm
        Number of spheres (0: none), their radius (> 0) and the distance kept from the
        lesions (>= 0), mm.

    Returns
    -------
    numpy.ndarray of int16
        Label image with the spheres labelled 1..n (fewer if they do not fit).

    Raises
    ------
    ValueError
        If ``n_rois`` is negative, ``radius_mm`` is not a positive number, ``margin_mm`` is
        negative or not finite, or ``tissue_mask`` does not have the shape of ``labels``.
    """
    lab = _check_labels(labels)
    aff = _check_affine(affine)
    tissue = np.asarray(tissue_mask, bool)
    if tissue.shape != lab.shape:
        raise ValueError(f"tissue_mask has shape {tissue.shape}, labels {lab.shape}")
    if int(n_rois) < 0:
        raise ValueError(f"n_rois must be >= 0, got {n_rois!r}")
    if radius_mm is not None and not (np.isfinite(radius_mm) and radius_mm > 0):
        raise ValueError(f"radius_mm must be a positive number of mm, got {radius_mm!r}")
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"margin_mm must be >= 0 mm, got {margin_mm!r}")
    spacing = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    out = np.zeros(lab.shape, np.int16)
    if int(n_rois) == 0:  # returned one sphere before: the first is placed unconditionally
        return out
    if radius_mm is None:
        radii = _equivalent_radii_mm(lab, aff)
        radius_mm = max(4.0, float(np.median(radii))) if radii.size else 5.0
    # Distance to non-tissue, the outside of the grid included (one-voxel non-tissue pad):
    # a sphere must lie inside the known tissue. Without the pad a mask filling the grid has
    # no background voxel and scipy's EDT measures from a virtual corner (-1, -1, -1):
    # spheres were cut by the far faces of the grid, never by the near ones.
    inside = ndimage.distance_transform_edt(np.pad(tissue, 1), sampling=spacing)
    inside = inside[1:-1, 1:-1, 1:-1]
    away = (ndimage.distance_transform_edt(lab == 0, sampling=spacing) if lab.any()
            else np.full(lab.shape, np.inf))
    candidates = np.argwhere((inside >= radius_mm) & (away >= radius_mm + margin_mm))
    if candidates.size == 0:
        return out
    points = candidates @ aff[:3, :3].T
    centre = np.argwhere(tissue).mean(axis=0) @ aff[:3, :3].T
    chosen = [int(np.argmin(np.linalg.norm(points - centre, axis=1)))]
    nearest = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < n_rois:
        nxt = int(np.argmax(nearest))
        if nearest[nxt] < 2 * radius_mm:  # no room for another disjoint sphere
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    reach = int(np.ceil(radius_mm / spacing.min())) + 1
    for number, index in enumerate(chosen, start=1):
        # Distances only in a box around the centre (the volume may be 1 mm whole-head).
        lo = np.maximum(candidates[index] - reach, 0)
        hi = np.minimum(candidates[index] + reach + 1, lab.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        ijk = np.indices(hi - lo).reshape(3, -1).T + lo
        distance = np.linalg.norm((ijk - candidates[index]) @ aff[:3, :3].T, axis=1)
        sphere = (distance <= radius_mm).reshape(hi - lo)
        out[box][sphere & tissue[box] & (lab[box] == 0)] = number
    return out


def quantification_labels(mean_delta_r1_per_s: np.ndarray, loq_per_s: np.ndarray) -> np.ndarray:
    """The ``quantification`` column: a mean below its LoQ is never a bare number.

    Parameters
    ----------
    mean_delta_r1_per_s : ndarray
        Lesion-mean ΔR1, 1/s.
    loq_per_s : ndarray
        LoQ of each mean, 1/s (NaN where it could not be estimated).

    Returns
    -------
    ndarray of str
        ``"<LoQ"`` when ``|mean| < LoQ``, ``"quantified"`` otherwise, ``"n/a"`` without a LoQ.
    """
    loq = np.asarray(loq_per_s, dtype=np.float64)
    return np.where(~np.isfinite(loq), NOT_ASSESSED,
                    np.where(np.abs(mean_delta_r1_per_s) < loq, BELOW_LOQ, QUANTIFIED))


def normal_tissue_enhancement(se_percent: np.ndarray, normal: np.ndarray) -> float:
    """Median SE % of normal tissue: receive-bias changes and drift show up here.

    Parameters
    ----------
    se_percent : ndarray
        Signal-enhancement map, percent (NaN where undefined).
    normal : ndarray of bool
        Normal tissue on the same grid.

    Returns
    -------
    float
        The median over normal tissue, NaN without normal tissue.
    """
    if not normal.any():
        return np.nan
    return float(np.nanmedian(np.where(normal, se_percent, np.nan)))


def control_failed(delta_r1_mean: np.ndarray, delta_r1_loq: np.ndarray,
                   se_mean: np.ndarray | None = None,
                   se_tolerance_percent: float = CONTROL_SE_TOLERANCE_PERCENT) -> np.ndarray:
    """A healthy-tissue control fails when its |ΔR1 mean| exceeds its LoQ or, with SE,
    its |SE mean| exceeds ``se_tolerance_percent`` (NanoRad's negative control).

    Parameters
    ----------
    delta_r1_mean, delta_r1_loq : array_like
        Region-mean ΔR1 and its LoQ, 1/s.
    se_mean : array_like, optional
        Region-mean SE, percent.
    se_tolerance_percent : float
        |SE| above which the control fails.

    Returns
    -------
    array of bool
        One flag per region.
    """
    failed = np.abs(delta_r1_mean) > delta_r1_loq
    if se_mean is not None:
        failed |= np.abs(se_mean) > se_tolerance_percent
    return failed
