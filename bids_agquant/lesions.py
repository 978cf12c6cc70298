"""Per-lesion geometry and intensity statistics, and the lesion-table data dictionary.

Pure functions on numpy arrays (a 3-D integer label image, its 4x4 voxel-to-world affine and
parameter maps on the same grid); no file I/O.

Geometry definitions (all physical, computed through the affine, so anisotropic and oblique
grids are handled):

* ``volume_ml`` = ``n_voxels · |det(affine[:3, :3])|`` mm³ / 1000.
* ``equiv_diameter_mm`` = diameter of the sphere of the same volume, ``(6V/π)^(1/3)`` with V in
  mm³.
* ``longest_diameter_mm`` = maximum 3-D Feret (caliper) diameter, i.e. the largest distance
  between two **voxel centres** of the lesion. Because it is measured between centres it
  underestimates the physical extent of the voxelised object by about one voxel (a
  20-voxel-wide sphere gives ≈ 19.9 mm at 1 mm; mesh-based tools report ≈ 20.8 mm). A single
  voxel gives 0.0. It is a 3-D diameter.
* ``longest_axial_diameter_mm`` = the RECIST 1.1 / RANO-BM measure: the largest in-plane
  Feret diameter over the axial slices (the voxel axis most aligned with the world
  superior axis defines the slices), voxel centres, distances in mm.
* ``measurable`` = ``longest_diameter_mm >= measurable_threshold_mm`` (inclusive; a tolerance
  of 1e-6 mm absorbs floating-point rounding of the affine).
* ``centroid_{x,y,z}_mm`` = mean of the voxel-centre world coordinates (the NIfTI
  scanner/world frame of the affine, RAS+ for NIfTI).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = [
    "column_dictionary",
    "control_rois",
    "limit_of_quantification",
    "line_profiles",
    "persistence_table",
    "lesion_concentration_features",
    "lesion_geometry",
    "lesion_intensity_stats",
    "lesion_table",
]

#: Width of the histogram bins of the Gd concentration for the lesion entropy, mM. Fixed (not
#: per lesion) so that entropies compare across lesions and participants: a lesion of pure
#: noise around zero has a low entropy, a heterogeneous uptake a high one (NanoBrainMets used
#: entropy to separate placebo from AGuIX patients; its bins are not published).
ENTROPY_BIN_WIDTH_MM = 0.005

#: Default edges (mg/L) of the concentration bins for the percentage of lesion volume
#: (NanoBrainMets reported <= 0.05 mg/ml and > 0.1 mg/ml).
VOLUME_BIN_EDGES_MG_PER_L = (50.0, 100.0)

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

STAT_SUFFIXES = ("mean", "sd", "median", "p25", "p75")

#: The map name for which ``negative_fraction`` is reported.
NEGATIVE_FRACTION_MAP = "gd_mM"


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- geometry


def lesion_geometry(
    labels: np.ndarray, affine: np.ndarray, measurable_threshold_mm: float = 10.0
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
        these columns) when there is no lesion. See the module docstring for the
        definitions; the voxel-centre Feret diameter is about one voxel smaller than the
        physical extent.

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


# --------------------------------------------------------------------------- intensities


def _grouped_quantile(
    sorted_values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float
) -> np.ndarray:
    """Per-group quantile (numpy's default 'linear' method) of values sorted within groups."""
    out = np.full(counts.shape, np.nan)
    has = counts > 0
    if not np.any(has):
        return out
    pos = (counts[has] - 1) * q
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts[has] - 1)
    frac = pos - lo
    v_lo = sorted_values[starts[has] + lo]
    v_hi = sorted_values[starts[has] + hi]
    out[has] = v_lo + frac * (v_hi - v_lo)
    return out


def lesion_intensity_stats(labels: np.ndarray, maps: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-lesion summary statistics of parameter maps.

    Parameters
    ----------
    labels : numpy.ndarray, shape (X, Y, Z)
        Integer label image (0 = background).
    maps : mapping of str to numpy.ndarray
        Maps on the same grid as ``labels`` (e.g. ``{"gd_mM": ..., "deltaR1": ...}``).

    Returns
    -------
    pandas.DataFrame
        One row per nonzero label (sorted), column ``lesion_id`` then, for each map name
        ``<name>`` in the order given: ``<name>_mean``, ``<name>_sd`` (sample SD, ddof=1;
        NaN for fewer than 2 voxels), ``<name>_median``, ``<name>_p25``, ``<name>_p75``
        (linear-interpolation percentiles, as :func:`numpy.percentile`). Only voxels where
        the map is finite are used (NaN and ±inf are ignored); a lesion with no finite
        voxel gets NaN. If a map is named ``"gd_mM"``, ``negative_fraction`` (fraction of
        its finite voxels that are < 0) is added. Negative values are never clipped.

    Raises
    ------
    ValueError
        If a map's shape differs from that of ``labels``.
    """
    lab = _check_labels(labels)
    for name, arr in maps.items():
        if np.shape(arr) != lab.shape:
            raise ValueError(
                f"map {name!r} has shape {np.shape(arr)}, labels have shape {lab.shape}"
            )
    idx, ids, _ = _voxels_by_label(lab)
    group = np.searchsorted(ids, lab.ravel()[idx])  # 0..n_les-1, sorted
    n_les = ids.size

    columns: dict[str, np.ndarray] = {"lesion_id": ids.astype(np.int64)}
    for name, arr in maps.items():
        values = np.asarray(arr).ravel()[idx].astype(np.float64, copy=False)
        finite = np.isfinite(values)
        v = values[finite]
        g = group[finite]
        order = np.lexsort((v, g))  # by lesion, then by value
        v = v[order]
        g = g[order]
        counts = np.bincount(g, minlength=n_les).astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.bincount(g, weights=v, minlength=n_les) / counts
            dev = v - mean[g]
            ss = np.bincount(g, weights=dev * dev, minlength=n_les)
            sd = np.where(counts >= 2, np.sqrt(ss / np.maximum(counts - 1, 1)), np.nan)
        mean = np.where(counts > 0, mean, np.nan)
        columns[f"{name}_mean"] = mean
        columns[f"{name}_sd"] = sd
        columns[f"{name}_median"] = _grouped_quantile(v, starts, counts, 0.5)
        columns[f"{name}_p25"] = _grouped_quantile(v, starts, counts, 0.25)
        columns[f"{name}_p75"] = _grouped_quantile(v, starts, counts, 0.75)
        if name == NEGATIVE_FRACTION_MAP:
            n_neg = np.bincount(g, weights=(v < 0).astype(np.float64), minlength=n_les)
            with np.errstate(invalid="ignore", divide="ignore"):
                columns["negative_fraction"] = np.where(counts > 0, n_neg / counts, np.nan)
    return pd.DataFrame(columns)


def _bin_label(low: float | None, high: float | None) -> str:
    if low is None:
        return f"vol_pct_mass_le_{high:g}_mg_per_L"
    if high is None:
        return f"vol_pct_mass_gt_{low:g}_mg_per_L"
    return f"vol_pct_mass_{low:g}_to_{high:g}_mg_per_L"


def lesion_concentration_features(
    labels: np.ndarray,
    gd_mM: np.ndarray,
    mass_mg_per_L: np.ndarray | None = None,
    *,
    entropy_bin_width_mM: float = ENTROPY_BIN_WIDTH_MM,
    bin_edges_mg_per_L: Iterable[float] = VOLUME_BIN_EDGES_MG_PER_L,
) -> pd.DataFrame:
    """Distribution features of the concentration inside every lesion.

    Parameters
    ----------
    labels : numpy.ndarray, shape (X, Y, Z)
        Integer label image (0 = background).
    gd_mM : numpy.ndarray
        Gd concentration map, mmol/L, same grid; non-finite voxels are ignored.
    mass_mg_per_L : numpy.ndarray, optional
        Agent mass concentration map, mg/L, same grid (for the volume bins and its own
        min/max/IQR/upper-quartile mean).
    entropy_bin_width_mM : float
        Histogram bin width for the entropy (bins ``[k w, (k + 1) w)`` anchored at 0).
    bin_edges_mg_per_L : iterable of float
        Increasing edges of the mass-concentration bins; bins are ``<= e1``,
        ``(e1, e2]``, ..., ``> en``. No edges, no ``vol_pct_mass_...`` columns.

    Returns
    -------
    pandas.DataFrame
        One row per lesion: ``lesion_id``; for each map ``<m>`` (``gd_mM``, ``mass_mg_per_L``)
        ``<m>_min``, ``<m>_max``, ``<m>_iqr`` (p75 - p25, linear percentiles) and
        ``<m>_uqmean`` (mean of the voxels at or above the lesion's p75, the "upper quartile"
        of NanoBrainMets); ``gd_entropy_bits`` (Shannon entropy, log2, of the binned
        concentration histogram); ``vol_pct_mass_...`` (percentage of the lesion's voxels in
        each mass-concentration bin). Negative values are kept everywhere.
    """
    lab = _check_labels(labels)
    width = float(entropy_bin_width_mM)
    if not width > 0:
        raise ValueError(f"entropy_bin_width_mM must be > 0, got {entropy_bin_width_mM!r}")
    edges = [float(e) for e in bin_edges_mg_per_L]
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"bin edges must increase, got {edges}")
    idx, ids, _ = _voxels_by_label(lab)
    group = np.searchsorted(ids, lab.ravel()[idx])
    n_les = ids.size
    columns: dict[str, np.ndarray] = {"lesion_id": ids.astype(np.int64)}
    maps = {"gd_mM": gd_mM} if mass_mg_per_L is None else {"gd_mM": gd_mM,
                                                           "mass_mg_per_L": mass_mg_per_L}
    for name, arr in maps.items():
        if np.shape(arr) != lab.shape:
            raise ValueError(f"map {name!r} has shape {np.shape(arr)}, labels {lab.shape}")
        values = np.asarray(arr).ravel()[idx].astype(np.float64, copy=False)
        finite = np.isfinite(values)
        v, g = values[finite], group[finite]
        order = np.lexsort((v, g))
        v, g = v[order], g[order]
        counts = np.bincount(g, minlength=n_les).astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        has = counts > 0
        padded = np.append(v, np.nan)  # index v.size stands for "no voxel"
        columns[f"{name}_min"] = padded[np.where(has, starts, v.size)]
        columns[f"{name}_max"] = padded[np.where(has, starts + counts - 1, v.size)]
        p25 = _grouped_quantile(v, starts, counts, 0.25)
        p75 = _grouped_quantile(v, starts, counts, 0.75)
        columns[f"{name}_iqr"] = p75 - p25
        upper = v >= p75[g] if v.size else np.zeros(0, bool)
        n_up = np.bincount(g, weights=upper.astype(np.float64), minlength=n_les)
        s_up = np.bincount(g, weights=np.where(upper, v, 0.0), minlength=n_les)
        with np.errstate(invalid="ignore", divide="ignore"):
            columns[f"{name}_uqmean"] = np.where(n_up > 0, s_up / n_up, np.nan)
        if name == "gd_mM":
            with np.errstate(over="ignore"):  # |v| / width beyond float64: an inf bin
                columns["gd_entropy_bits"] = _grouped_entropy(np.floor(v / width), g, counts)
        if name == "mass_mg_per_L" and edges:  # no edges: no bins (not a None-None bin)
            bounds = [None, *edges, None]
            for low, high in zip(bounds[:-1], bounds[1:], strict=True):
                inside = np.ones(v.shape, bool)
                if low is not None:
                    inside &= v > low
                if high is not None:
                    inside &= v <= high
                n_in = np.bincount(g, weights=inside.astype(np.float64), minlength=n_les)
                with np.errstate(invalid="ignore", divide="ignore"):
                    columns[_bin_label(low, high)] = np.where(has, 100.0 * n_in / counts,
                                                              np.nan)
    return pd.DataFrame(columns)


def _grouped_entropy(bins: np.ndarray, group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of the bin occupancy within each group (groups sorted)."""
    out = np.full(counts.shape, np.nan)
    if bins.size == 0:
        return out
    # Bin indices stay float64 (``+ 0.0`` merges -0.0 into 0.0): an int64 cast overflowed
    # beyond |C| = 2**63 * width (4.6e16 mM at the default width), with a warning, and
    # put all those voxels into one bin.
    pairs = np.stack([group.astype(np.float64), bins + 0.0], axis=1)
    unique, occupancy = np.unique(pairs, axis=0, return_counts=True)
    lesion = unique[:, 0].astype(np.int64)
    p = occupancy / counts[lesion]
    terms = -p * np.log2(p)
    entropy = np.bincount(lesion, weights=terms, minlength=counts.size)
    return np.where(counts > 0, entropy, np.nan)


# --------------------------------------------------------------------------- noise and controls

#: ICH Q2 multipliers of the blank's standard deviation: limit of detection and of
#: quantification.
LOD_K = 3.3
LOQ_K = 10.0


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


def _equivalent_radii_mm(lab: np.ndarray, aff: np.ndarray) -> np.ndarray:
    """Equivalent-sphere radius (mm) of every label present, in label order."""
    # np.unique, not np.bincount: ids need not be contiguous and a bincount allocates one
    # counter per integer up to the largest id (16 GB for an id of 2**31 - 1).
    counts = np.unique(lab[lab > 0], return_counts=True)[1]
    volume_mm3 = counts * abs(float(np.linalg.det(aff[:3, :3])))
    return np.cbrt(3.0 * volume_mm3 / (4.0 * np.pi))


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


def persistence_table(early: pd.DataFrame, late: pd.DataFrame,
                      columns: Iterable[str] = ("se_percent_mean", "gd_mM_mean",
                                                "mass_mg_per_L_mean")) -> pd.DataFrame:
    """Late/early ratios per lesion (NanoRad's D8/D1 persistence), matched on ``lesion_id``.

    Parameters
    ----------
    early, late : pandas.DataFrame
        Lesion tables of the two timepoints (same contours, so the same lesion ids).
    columns : iterable of str
        Quantities to compare; those missing from either table are skipped.

    Returns
    -------
    pandas.DataFrame
        ``lesion_id``, ``early_timepoint``, ``late_timepoint``, and per quantity ``<q>_early``,
        ``<q>_late`` and ``<q>_ratio`` (late / early; NaN when early <= 0, where a ratio
        means nothing). When the late table has ``quantification``, it is carried as
        ``late_quantification`` (a ratio of a '<LoQ' concentration is not a measurement).
    """
    keep = [c for c in columns if c in early and c in late]
    merged = early[["lesion_id", "timepoint", *keep]].merge(
        late[["lesion_id", "timepoint", *keep]
             + (["quantification"] if "quantification" in late else [])],
        on="lesion_id", suffixes=("_early", "_late"), validate="one_to_one")
    out = pd.DataFrame({"lesion_id": merged["lesion_id"],
                        "early_timepoint": merged["timepoint_early"],
                        "late_timepoint": merged["timepoint_late"]})
    for column in keep:
        first, last = merged[f"{column}_early"], merged[f"{column}_late"]
        out[f"{column}_early"] = first
        out[f"{column}_late"] = last
        out[f"{column}_ratio"] = np.where(first > 0, last / first.where(first > 0), np.nan)
    if "quantification" in merged:
        out["late_quantification"] = merged["quantification"]
    return out


def lesion_table(
    labels: np.ndarray,
    affine: np.ndarray,
    maps: Mapping[str, np.ndarray],
    measurable_threshold_mm: float = 10.0,
) -> pd.DataFrame:
    """Geometry and intensity statistics of every lesion, merged on ``lesion_id``.

    Parameters
    ----------
    labels, affine, measurable_threshold_mm
        See :func:`lesion_geometry`.
    maps : mapping of str to numpy.ndarray
        See :func:`lesion_intensity_stats` (may be empty). With ``"gd_mM"`` (and
        ``"mass_mg_per_L"``) the :func:`lesion_concentration_features` are added.

    Returns
    -------
    pandas.DataFrame
        The :func:`lesion_geometry` columns followed by the
        :func:`lesion_intensity_stats` (and concentration-feature) columns, one row per
        lesion, sorted by id.
    """
    geometry = lesion_geometry(labels, affine, measurable_threshold_mm)
    stats = lesion_intensity_stats(labels, maps)
    table = geometry.merge(stats, on="lesion_id", how="left", validate="one_to_one")
    if "gd_mM" in maps:
        features = lesion_concentration_features(labels, maps["gd_mM"],
                                                 maps.get("mass_mg_per_L"))
        table = table.merge(features, on="lesion_id", how="left", validate="one_to_one")
    return table


# --------------------------------------------------------------------------- data dictionary

_FIXED_COLUMNS: dict[str, dict] = {
    "lesion_id": {
        "LongName": "Lesion identifier",
        "Description": "Integer label of the lesion in the desc-GTV_dseg label image.",
    },
    "timepoint": {
        "LongName": "Timepoint",
        "Description": "BIDS session label of the timepoint the row describes.",
    },
    "longest_axial_diameter_mm": {
        "LongName": "Longest axial diameter (RECIST 1.1 / RANO-BM)",
        "Description": "Largest in-plane distance between two voxel centres of the lesion in "
                       "one axial slice (slices along the voxel axis closest to superior).",
        "Units": "mm",
    },
    "gd_entropy_bits": {
        "LongName": "Entropy of the Gd concentration histogram",
        "Description": "Shannon entropy (log2) of the lesion's Gd concentration histogram with "
                       f"fixed bins of {ENTROPY_BIN_WIDTH_MM} mM anchored at 0; noise-only "
                       "lesions score low, heterogeneous uptake high.",
        "Units": "bit",
    },
    "percent_injected_dose_per_g": {
        "LongName": "Percent injected dose per gram",
        "Description": "100 x mean mass concentration [mg/L] x 1e-3 / (dose [mg/kg] x body "
                       "weight [kg]), tissue density 1 kg/L; n/a without dose or weight.",
        "Units": "%/g",
    },
    "deltaR1_loq": {
        "LongName": "Lower limit of quantification of the lesion-mean Delta R1",
        "Description": "10 x the robust (MAD) standard deviation of mean Delta R1 over "
                       "normal-tissue cubes of the lesion's volume (ICH Q2: 10 sigma of the "
                       "blank); includes noise, its spatial correlation and residual "
                       "misregistration.",
        "Units": "1/s",
    },
    "gd_mM_loq": {
        "LongName": "Lower limit of quantification of the lesion-mean Gd concentration",
        "Description": "deltaR1_loq / r1.",
        "Units": "mmol/L",
    },
    "quantification": {
        "LongName": "Quantification status",
        "Description": "Whether the lesion-mean concentration is above the lower limit of "
                       "quantification; the numbers of a '<LoQ' lesion are not a measurement.",
        "Levels": {"quantified": "|mean Delta R1| >= LoQ", "<LoQ": "|mean Delta R1| < LoQ",
                   "n/a": "LoQ not available (too little normal tissue)"},
    },
    "se_percent_normal_tissue": {
        "LongName": "Signal enhancement of normal-appearing tissue",
        "Description": "Median SE over normal tissue (signal mask without the lesions and a "
                       "2-voxel margin) of this timepoint.",
        "Units": "%",
    },
    "se_percent_mean_normalised": {
        "LongName": "Lesion signal enhancement relative to normal tissue",
        "Description": "se_percent_mean - se_percent_normal_tissue: removes a global signal "
                       "change (scaling, receive bias) between the sessions.",
        "Units": "%",
    },
    "ring_mass_mg_per_L": {
        "LongName": "Surrounding normal-tissue mass concentration",
        "Description": "Mean mass concentration in a 4 mm ring around the lesion (other "
                       "lesions excluded): the baseline of the line profiles.",
        "Units": "mg/L",
    },
    "peak_to_valley_ratio": {
        "LongName": "Peak-to-valley ratio of the line profiles",
        "Description": "Largest / smallest mass concentration inside the lesion along its "
                       "right-left and anterior-posterior profiles through the centroid; n/a "
                       "when the smallest is <= 0.",
    },
    "t1_method": {
        "LongName": "T1 mapping method",
        "Description": "Method of the T1 maps the concentrations come from.",
        "Levels": {"vfa": "variable flip angle (DESPOT1)", "mp2rage": "MP2RAGE look-up"},
    },
    "n_voxels": {
        "LongName": "Number of voxels",
        "Description": "Number of voxels carrying this lesion label in the label image.",
    },
    "volume_ml": {
        "LongName": "Lesion volume",
        "Description": "Number of voxels times the voxel volume |det(affine[:3,:3])|.",
        "Units": "mL",
    },
    "equiv_diameter_mm": {
        "LongName": "Equivalent-sphere diameter",
        "Description": "Diameter of the sphere with the lesion volume, (6V/pi)^(1/3).",
        "Units": "mm",
    },
    "longest_diameter_mm": {
        "LongName": "Longest 3-D diameter",
        "Description": (
            "Maximum 3-D Feret diameter: largest distance between two voxel centres of the "
            "lesion, in physical space. Underestimates the physical extent by about one "
            "voxel; 0 for a single voxel. Not the RECIST/RANO-BM axial diameter."
        ),
        "Units": "mm",
    },
    "measurable": {
        "LongName": "Measurable lesion",
        "Description": (
            "True when longest_diameter_mm is greater than or equal to the measurability "
            "threshold (default 10 mm, inclusive)."
        ),
    },
    "negative_fraction": {
        "LongName": "Fraction of negative Gd concentration voxels",
        "Description": (
            "Fraction (0-1) of the lesion voxels with a finite Gd concentration that are "
            "negative (noise, misregistration); negative values are kept in all statistics."
        ),
    },
}

for _axis in "xyz":
    _FIXED_COLUMNS[f"centroid_{_axis}_mm"] = {
        "LongName": f"Lesion centroid, {_axis} coordinate",
        "Description": (
            f"Mean {_axis} world coordinate (NIfTI scanner frame, RAS+) of the lesion voxel "
            "centres in the space of the label image."
        ),
        "Units": "mm",
    }

_STAT_TEXT = {
    "mean": ("mean", "Mean over the lesion voxels with a finite value"),
    "sd": (
        "standard deviation",
        "Sample standard deviation (ddof=1) over the lesion voxels with a finite value; "
        "n/a for fewer than 2 voxels",
    ),
    "median": ("median", "Median over the lesion voxels with a finite value"),
    "p25": ("25th percentile", "25th percentile (linear interpolation) over the lesion voxels"),
    "p75": ("75th percentile", "75th percentile (linear interpolation) over the lesion voxels"),
    "min": ("minimum", "Smallest value over the lesion voxels with a finite value"),
    "max": ("maximum", "Largest value over the lesion voxels with a finite value"),
    "iqr": ("interquartile range", "p75 - p25 (linear interpolation) over the lesion voxels"),
    "uqmean": ("upper-quartile mean", "Mean of the lesion voxels at or above the lesion's "
               "75th percentile (the 'upper quartile' of NanoBrainMets)"),
}


def _quantity(prefix: str) -> tuple[str, str, str | None] | None:
    """LongName, description and Units of a known map prefix, or None."""
    if prefix == "gd_mM":
        return ("Gd concentration", "Gd concentration, Delta R1 / r1 (per Gd ion)", "mmol/L")
    if prefix == "mass_mg_per_L":
        return (
            "Nanoparticle mass concentration",
            "Mass concentration of the agent, Gd concentration x molar mass / Gd per particle",
            "mg/L",
        )
    if prefix in ("deltaR1", "delta_r1", "deltaR1_per_s"):
        return ("Delta R1", "Change of R1 from the baseline session, R1_post - R1_pre", "1/s")
    if prefix in ("se_percent", "se"):
        return (
            "Signal enhancement",
            "T1-weighted signal enhancement 100 (S_post - S_pre) / S_pre",
            "%",
        )
    m = re.fullmatch(r"t1_(.+)_s", prefix)
    if m:
        return (f"T1 ({m.group(1)})", f"T1 relaxation time at the {m.group(1)} timepoint", "s")
    m = re.fullmatch(r"r1_(.+)_per_s", prefix)
    if m:
        return (f"R1 ({m.group(1)})", f"R1 relaxation rate at the {m.group(1)} timepoint", "1/s")
    return None


def _units_from_suffix(name: str) -> str | None:
    for suffix, units in (
        ("_per_s", "1/s"),
        ("_mg_per_L", "mg/L"),
        ("_mM", "mmol/L"),
        ("_percent", "%"),
        ("_mm", "mm"),
        ("_ml", "mL"),
        ("_s", "s"),
    ):
        if name.endswith(suffix):
            return units
    return None


def _describe(column: str) -> dict[str, str]:
    if column in _FIXED_COLUMNS:
        return dict(_FIXED_COLUMNS[column])
    m = re.fullmatch(r"vol_pct_mass_(le_|gt_)?([\d.]+)(?:_to_([\d.]+))?_mg_per_L", column)
    if m:
        kind, a, b = m.groups()
        where = {"le_": f"<= {a} mg/L", "gt_": f"> {a} mg/L"}.get(kind, f"in ({a}, {b}] mg/L")
        return {"LongName": f"Percent of lesion volume with mass concentration {where}",
                "Description": "Percentage of the lesion voxels with a finite concentration "
                               f"whose agent mass concentration is {where}.",
                "Units": "%"}
    prefix, _, stat = column.rpartition("_")
    if prefix and stat in _STAT_TEXT:
        stat_long, stat_desc = _STAT_TEXT[stat]
        known = _quantity(prefix)
        if known is not None:
            long_name, desc, units = known
        else:
            long_name, desc, units = prefix, f"Map '{prefix}'", _units_from_suffix(prefix)
        entry = {
            "LongName": f"{long_name}, lesion {stat_long}",
            "Description": f"{stat_desc}. Quantity: {desc}.",
        }
        if units is not None:
            entry["Units"] = units
        return entry
    entry = {"LongName": column, "Description": f"Column '{column}' (no description available)."}
    units = _units_from_suffix(column)
    if units is not None:
        entry["Units"] = units
    return entry


def column_dictionary(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """BIDS JSON data dictionary entries for lesion-table columns.

    Parameters
    ----------
    columns : iterable of str
        Column names of a lesion table (e.g. ``DataFrame.columns``).

    Returns
    -------
    dict
        ``{column: {"LongName": ..., "Description": ..., "Units": ...}}`` for every column
        (``Units`` is omitted for dimensionless columns such as ``lesion_id``,
        ``n_voxels``, ``measurable``, ``negative_fraction``). Statistic columns
        ``<map>_{mean,sd,median,p25,p75}`` of known maps (``gd_mM`` mmol/L,
        ``mass_mg_per_L`` mg/L, ``deltaR1`` 1/s, ``t1_<tp>_s`` s, ``r1_<tp>_per_s`` 1/s,
        ``se_percent`` %) are described with their units; unknown columns get a generic
        description (units guessed from a unit-like suffix); this never raises for them.
    """
    return {str(col): _describe(str(col)) for col in columns}


# --------------------------------------------------------------------------- uptake tables
#: Margin (voxels) between the lesions and the normal tissue used for the LoQ and the
#: controls: the lesion edge (partial volume, resampling) is not normal tissue.
NORMAL_TISSUE_MARGIN_VOXELS = 2

#: |SE mean| (%) above which a healthy-tissue control region fails.
CONTROL_SE_TOLERANCE_PERCENT = 10.0

#: Values of the lesion table's ``quantification`` column.
QUANTIFIED, BELOW_LOQ, NOT_ASSESSED = "quantified", "<LoQ", "n/a"

PROFILE_DICTIONARY = {
    "lesion_id": {"LongName": "Lesion identifier"},
    "timepoint": {"LongName": "Timepoint"},
    "direction": {"LongName": "Profile direction", "Levels": {
        "RL": "right-left, along the voxel axis closest to world R",
        "AP": "anterior-posterior, along the voxel axis closest to world A"}},
    "position_mm": {"LongName": "Position from the lesion centroid", "Units": "mm",
                    "Description": "Positive towards right (RL) or anterior (AP)."},
    "mass_mg_per_L": {"LongName": "Mass concentration", "Units": "mg/L",
                      "Description": "Inside the lesion the map value; outside it "
                                     "the mean of the 4 mm surrounding normal ring."},
    "inside": {"LongName": "Inside the lesion"},
}

PERSISTENCE_DICTIONARY = {
    "lesion_id": {"LongName": "Lesion identifier"},
    "early_timepoint": {"LongName": "Early timepoint (the denominator)"},
    "late_timepoint": {"LongName": "Late timepoint (the numerator)"},
    "late_quantification": {"LongName": "Quantification status at the late timepoint",
                            "Description": "'<LoQ': the late concentration, and so "
                                           "its ratio, is not a measurement."},
}


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

    Returns NaN without normal tissue.
    """
    if not normal.any():
        return np.nan
    return float(np.nanmedian(np.where(normal, se_percent, np.nan)))


def control_failed(delta_r1_mean: np.ndarray, delta_r1_loq: np.ndarray,
                   se_mean: np.ndarray | None = None,
                   se_tolerance_percent: float = CONTROL_SE_TOLERANCE_PERCENT) -> np.ndarray:
    """A healthy-tissue control fails when its |ΔR1 mean| exceeds its LoQ or, with SE,
    its |SE mean| exceeds ``se_tolerance_percent`` (NanoRad's negative control)."""
    failed = np.abs(delta_r1_mean) > delta_r1_loq
    if se_mean is not None:
        failed |= np.abs(se_mean) > se_tolerance_percent
    return failed


def control_dictionary(columns: Iterable[str], se_tolerance_percent: float) -> dict:
    """BIDS data dictionary of the healthy-tissue control table."""
    own = {
        "roi_id": {"LongName": "Control region", "Description": "Sphere of healthy tissue "
                   "(no lesion within 10 mm), radius of the median lesion's equivalent "
                   "sphere (at least 4 mm); NanoRad's negative control."},
        "deltaR1_loq": {"LongName": "LoQ of the region-mean Delta R1", "Units": "1/s",
                        "Description": "10 x robust SD of normal-tissue means over "
                                       "regions of this size."},
        "control_failed": {"LongName": "Control failed", "Description": "True when "
                           "|Delta R1 mean| exceeds its LoQ or |SE mean| exceeds "
                           f"{se_tolerance_percent:g} %."},
    }
    full = column_dictionary([c for c in columns if c not in own])
    full.update(own)
    return full


def persistence_dictionary(columns: Iterable[str]) -> dict:
    """BIDS data dictionary of a persistence table (:func:`persistence_table`)."""
    dictionary = dict(PERSISTENCE_DICTIONARY)
    for column in columns:
        if column.endswith("_ratio"):
            dictionary[column] = {"LongName": f"{column[:-6]} late / early",
                                  "Description": "n/a when the early value is <= 0."}
        elif column.endswith(("_early", "_late")) and column not in dictionary:
            dictionary[column] = {"LongName": column}
    return dictionary


def _quality_columns(table: pd.DataFrame, labels: np.ndarray, affine: np.ndarray,
                     maps: Mapping[str, np.ndarray], normal: np.ndarray, timepoint: str,
                     r1_per_mM_per_s: float | None,
                     se_tolerance_percent: float) -> pd.DataFrame:
    """Add the LoQ, quantification and normal-tissue SE columns to ``table`` (in place) and
    return the healthy-tissue control table."""
    normal = normal & ~ndimage.binary_dilation(labels > 0,
                                               iterations=NORMAL_TISSUE_MARGIN_VOXELS)
    dr1 = maps["deltaR1"]
    controls = control_rois(labels, normal, affine)
    stats = lesion_intensity_stats(controls, {k: v for k, v in maps.items()
                                              if k in ("deltaR1", "gd_mM", "se_percent")})
    stats.insert(1, "n_voxels", np.bincount(controls.ravel())[stats["lesion_id"]])
    # One call for lesions and controls: regions of one size share the filtering.
    limits = limit_of_quantification(dr1, normal, [*table["n_voxels"], *stats["n_voxels"]])
    loq = limits[: len(table)]
    table["deltaR1_loq"] = loq
    if r1_per_mM_per_s:
        table["gd_mM_loq"] = loq / r1_per_mM_per_s
    if "se_percent" in maps:
        # The normalised column subtracts normal tissue's SE (recorded; the raw SE is kept).
        reference = normal_tissue_enhancement(maps["se_percent"], normal)
        table["se_percent_normal_tissue"] = reference
        table["se_percent_mean_normalised"] = table["se_percent_mean"] - reference
    table["quantification"] = quantification_labels(table["deltaR1_mean"], loq)

    stats = stats.rename(columns={"lesion_id": "roi_id"})
    stats.insert(1, "timepoint", timepoint)
    stats["deltaR1_loq"] = limits[len(table):]
    stats["control_failed"] = control_failed(
        stats["deltaR1_mean"], stats["deltaR1_loq"],
        stats["se_percent_mean"] if "se_percent_mean" in stats else None, se_tolerance_percent)
    return stats


def uptake_tables(
    labels: np.ndarray,
    affine: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    timepoint: str,
    t1_method: str | None = None,
    names: Mapping[int, str] | None = None,
    normal: np.ndarray | None = None,
    measurable_threshold_mm: float = 10.0,
    hours_post_injection: float | None = None,
    dose_mg_per_kg: float | None = None,
    weight_kg: float | None = None,
    r1_per_mM_per_s: float | None = None,
    se_tolerance_percent: float = CONTROL_SE_TOLERANCE_PERCENT,
) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame]:
    """The lesion, healthy-tissue control and line-profile tables of one timepoint.

    Parameters
    ----------
    labels, affine
        Lesion labels on the reference grid and its voxel-to-world matrix (mm).
    maps : mapping of str to ndarray
        ``gd_mM``, ``mass_mg_per_L``, ``deltaR1``, ``t1_baseline_s``, ``t1_post_s`` and
        optionally ``se_percent`` on the same grid.
    timepoint, t1_method : str
        Recorded in the tables.
    names : mapping of int to str, optional
        Lesion names by label (``_dseg.tsv``); ``"n/a"`` for unnamed labels.
    normal : ndarray of bool, optional
        Normal tissue (signal mask without the lesions and a margin): the blank of the LoQ
        and where the control regions go. Without it there are no LoQ columns and no
        control table.
    measurable_threshold_mm : float
        Longest diameter at or above which a lesion is measurable.
    hours_post_injection, dose_mg_per_kg, weight_kg : float, optional
        Recorded; dose and weight give %ID/g (NaN for a placebo or when unknown).
    r1_per_mM_per_s : float, optional
        Relaxivity used for the concentrations: the LoQ in mM.
    se_tolerance_percent : float
        |SE| above which a healthy-tissue control fails.

    Returns
    -------
    lesions, controls, profiles : pandas.DataFrame
        ``controls`` is None without ``normal``.
    """
    from .qmri.uptake import percent_injected_dose_per_g

    table = lesion_table(labels, affine, maps, measurable_threshold_mm=measurable_threshold_mm)
    table.insert(1, "timepoint", timepoint)
    if t1_method:
        table.insert(2, "t1_method", t1_method)
    if names is not None:
        table.insert(1, "lesion_name", [names.get(int(i), "n/a") for i in table["lesion_id"]])
    controls = None
    if normal is not None:
        controls = _quality_columns(table, labels, affine, maps, normal, timepoint,
                                    r1_per_mM_per_s, se_tolerance_percent)
    profiles, summary = line_profiles(labels, affine, maps["mass_mg_per_L"])
    summary = summary.rename(columns={"ring_mean": "ring_mass_mg_per_L"})
    for column in ("ring_mass_mg_per_L", "peak_to_valley_ratio"):
        table[column] = table["lesion_id"].map(summary.set_index("lesion_id")[column])
    profiles = profiles.rename(columns={"value": "mass_mg_per_L"})
    profiles.insert(1, "timepoint", timepoint)
    table["percent_injected_dose_per_g"] = percent_injected_dose_per_g(
        table["mass_mg_per_L_mean"].to_numpy(), dose_mg_per_kg, weight_kg)
    table["hours_post_injection"] = (hours_post_injection if hours_post_injection is not None
                                     else np.nan)
    return table, controls, profiles


def labels_from_contours(data: np.ndarray, kind: str) -> np.ndarray:
    """An int16 label map, one label per lesion, from a contour image.

    Parameters
    ----------
    data : ndarray
        3-D contour image: integer labels (``kind="dseg"``) or a binary mask
        (``kind="mask"``: lesions are its 26-connected components).
    kind : {"dseg", "mask"}

    Raises
    ------
    ValueError
        Not 3-D, non-integer labels, or labels outside 0..32767.
    """
    if data.ndim != 3:
        raise ValueError(f"contours must be a 3-D image, got shape {data.shape}")
    if not np.allclose(data, np.rint(data)):
        raise ValueError("contour labels must be integers")
    labels = np.rint(data).astype(np.int64)
    if kind == "mask":
        labels, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    if labels.min() < 0 or labels.max() > np.iinfo(np.int16).max:
        raise ValueError("label values out of range")
    return labels.astype(np.int16)
