"""Per-lesion intensity statistics and concentration-distribution features.

Mean, SD, median and quartiles of any parameter map, and for the Gd (and agent mass)
concentration the min/max/IQR, upper-quartile mean, histogram entropy and the percentage of
the lesion volume in concentration bins (NanoBrainMets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from ._common import _check_labels, _voxels_by_label

#: Width of the histogram bins of the Gd concentration for the lesion entropy, mM. Fixed (not
#: per lesion) so that entropies compare across lesions and participants: a lesion of pure
#: noise around zero has a low entropy, a heterogeneous uptake a high one (NanoBrainMets used
#: entropy to separate placebo from AGuIX patients; its bins are not published).
ENTROPY_BIN_WIDTH_MM = 0.005

#: Default edges (mg/L) of the concentration bins for the percentage of lesion volume
#: (NanoBrainMets reported <= 0.05 mg/ml and > 0.1 mg/ml).
VOLUME_BIN_EDGES_MG_PER_L = (50.0, 100.0)

STAT_SUFFIXES = ("mean", "sd", "median", "p25", "p75")

#: The map name for which ``negative_fraction`` is reported.
NEGATIVE_FRACTION_MAP = "gd_mM"


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
