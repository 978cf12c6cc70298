"""Property-based tests (hypothesis) of the per-lesion measures in ``bids_agquant.lesions``.

For any label image (empty, single voxel, one-slice volumes, non-contiguous and large ids),
any non-singular affine (anisotropic, oblique, sheared, far from the origin) and any finite
map (float32 range, as NIfTI maps are stored, with NaN/inf sprinkled in): no exception other
than the documented ones, volumes and diameters >= 0 and consistent with each other,
statistics ordered (min <= p25 <= median <= p75 <= max) and equal to numpy's, fractions in
[0, 1], percentages in [0, 100], no floating-point warning.

Examples are derandomised (profile ``bids-agquant-ci``); set
``BIDS_AGQUANT_HYPOTHESIS_PROFILE=bids-agquant-thorough`` for a longer, randomised search.
Plain regression tests of the bugs these properties found are at the end of the module.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# shared hypothesis profiles (tests/hypothesis_profiles.py)
from hypothesis_profiles import no_float_warnings, props

from bids_agquant.lesions import (
    MEASURABLE_TOLERANCE_MM,
    column_dictionary,
    control_rois,
    lesion_concentration_features,
    lesion_geometry,
    lesion_intensity_stats,
    lesion_table,
    limit_of_quantification,
    line_profiles,
    persistence_table,
)

# ----------------------------------------------------------------------------- strategies

shapes3d = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 5))
#: Lesion ids: background-heavy, non-contiguous, and a large id (int32 max).
label_values = st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3, 7, 2**31 - 1])


@st.composite
def label_images(draw, shape=None):
    shape = draw(shapes3d) if shape is None else shape
    kind = draw(st.sampled_from(["random", "random", "empty", "box", "single"]))
    if kind == "random":
        lab = draw(hnp.arrays(np.int64, shape, elements=label_values))
    else:
        lab = np.zeros(shape, np.int64)
        if kind == "single":
            lab[tuple(draw(st.integers(0, n - 1)) for n in shape)] = draw(st.integers(1, 5))
        elif kind == "box":
            lo = [draw(st.integers(0, n - 1)) for n in shape]
            hi = [draw(st.integers(a + 1, n)) for a, n in zip(lo, shape, strict=True)]
            lab[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
    dtype = draw(st.sampled_from([np.int64, np.int32, np.uint16, np.float32, "bool"]))
    if dtype == "bool":
        return lab > 0
    if dtype is np.uint16:
        return np.minimum(lab, 65535).astype(np.uint16)
    if dtype is np.float32:
        return np.minimum(lab, 1000).astype(np.float32)
    return lab.astype(dtype)


def _rotation(q):
    q = np.asarray(q, float)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


@st.composite
def affines(draw, orthogonal=False):
    """Voxel-to-world affines: anisotropic (0.01-100 mm), flipped, permuted, oblique,
    sheared (unless ``orthogonal``), anywhere in space."""
    spacing = np.array([draw(st.one_of(st.sampled_from([1.0, 2.0, 0.5, 5.0]),
                                       st.floats(0.01, 100.0))) for _ in range(3)])
    kind = draw(st.sampled_from(["diag", "permuted", "oblique", "sheared"]))
    if orthogonal and kind == "sheared":
        kind = "oblique"
    if kind == "diag":
        mat = np.diag(spacing * draw(st.sampled_from([1, -1])))
    elif kind == "permuted":
        perm = draw(st.permutations([0, 1, 2]))
        mat = np.eye(3)[:, perm] * spacing
    else:
        quat = draw(st.tuples(*[st.floats(-1, 1)] * 4).filter(
            lambda q: np.linalg.norm(q) > 0.1))
        mat = _rotation(quat) * spacing
        if kind == "sheared":
            shear = np.eye(3)
            shear[0, 1], shear[0, 2], shear[1, 2] = (draw(st.floats(-2, 2)) for _ in range(3))
            mat = mat @ shear
    aff = np.eye(4)
    aff[:3, :3] = mat
    aff[:3, 3] = [draw(st.floats(-1e5, 1e5)) for _ in range(3)]
    return aff


#: Map values as stored in NIfTI float32 maps, NaN / inf included.
map_values = st.one_of(st.floats(-5.0, 5.0), st.floats(allow_nan=False, width=32),
                       st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf]))


def _maps(shape):
    return hnp.arrays(np.float32, shape, elements=map_values)


def _centres(lab, aff, lesion_id):
    ijk = np.argwhere(lab == lesion_id).astype(float)
    return ijk @ aff[:3, :3].T + aff[:3, 3], ijk


def _brute_diameter(points):
    if len(points) < 2:
        return 0.0
    d = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((d * d).sum(-1).max()))


# ----------------------------------------------------------------------------- geometry


@props(200)
@given(labels=label_images(), aff=affines(),
       threshold=st.one_of(st.just(10.0), st.floats(0.0, 50.0)))
def test_lesion_geometry_sizes_and_diameters_are_consistent(labels, aff, threshold):
    with no_float_warnings():
        geo = lesion_geometry(labels, aff, threshold)
    lab = np.asarray(labels).astype(np.int64)
    ids = np.unique(lab[lab > 0])
    assert list(geo["lesion_id"]) == list(ids)
    voxel_mm3 = abs(np.linalg.det(aff[:3, :3]))
    # a voxel is a parallelepiped: its centre is within half this of every point of it
    half_span = max(np.linalg.norm(aff[:3, :3] @ np.array(s)) for s in
                    itertools.product((-0.5, 0.5), repeat=3))
    for row in geo.itertuples():
        xyz, _ = _centres(lab, aff, row.lesion_id)
        n = len(xyz)
        assert row.n_voxels == n >= 1
        assert row.volume_ml >= 0
        assert row.volume_ml == pytest.approx(n * voxel_mm3 / 1000.0, rel=1e-12)
        assert row.equiv_diameter_mm == pytest.approx(
            (6.0 * n * voxel_mm3 / math.pi) ** (1 / 3), rel=1e-12)
        # exact Feret diameter (also through the convex-hull / degenerate-set paths)
        assert row.longest_diameter_mm == pytest.approx(_brute_diameter(xyz), rel=1e-9,
                                                        abs=1e-9)
        assert 0.0 <= row.longest_axial_diameter_mm <= row.longest_diameter_mm * (1 + 1e-12)
        if n == 1:
            assert row.longest_diameter_mm == 0.0 == row.longest_axial_diameter_mm
        # isodiametric inequality on the voxelised object (any shape, convex or not): its
        # extent is at most the centre-to-centre diameter plus one voxel "diagonal"
        assert row.equiv_diameter_mm <= (row.longest_diameter_mm + 2 * half_span) * (1 + 1e-9)
        assert row.measurable == (row.longest_diameter_mm
                                  >= threshold - MEASURABLE_TOLERANCE_MM)
        centroid = np.array([row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm])
        span = np.abs(xyz).max() * 1e-12 + 1e-9
        assert np.all(centroid >= xyz.min(axis=0) - span)
        assert np.all(centroid <= xyz.max(axis=0) + span)


@props(60)
@given(labels=label_images(), aff=affines(orthogonal=True),
       shift=st.tuples(*[st.floats(-1e4, 1e4)] * 3))
def test_lesion_geometry_is_translation_invariant(labels, aff, shift):
    moved = aff.copy()
    moved[:3, 3] += shift
    with no_float_warnings():
        a = lesion_geometry(labels, aff)
        b = lesion_geometry(labels, moved)
    for col in ("n_voxels", "volume_ml", "equiv_diameter_mm", "measurable"):
        assert list(a[col]) == list(b[col])
    np.testing.assert_allclose(b["longest_diameter_mm"], a["longest_diameter_mm"],
                               rtol=1e-9, atol=1e-6)


@props(40)
@given(
    labels=st.one_of(
        hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=3).filter(
            lambda s: len(s) != 3), elements=st.integers(0, 2)),
        hnp.arrays(np.int64, (2, 2, 2), elements=st.integers(-3, 2)).filter(
            lambda a: a.min() < 0),
        hnp.arrays(np.float64, (2, 2, 2), elements=st.sampled_from([0.5, 1.0, math.nan])
                   ).filter(lambda a: not np.all(a == np.round(a))),
    ),
)
def test_lesion_geometry_rejects_bad_label_images_by_name(labels):
    with pytest.raises(ValueError, match="labels"):
        lesion_geometry(labels, np.eye(4))


@props(40)
@given(aff=st.one_of(
    st.just(np.zeros((4, 4))),
    hnp.arrays(np.float64, (4, 4), elements=st.sampled_from([1.0, math.nan, math.inf])
               ).filter(lambda a: not np.all(np.isfinite(a))),
    hnp.arrays(np.float64, st.sampled_from([(3, 3), (4,), (4, 5)]), elements=st.just(1.0)),
))
def test_lesion_geometry_rejects_bad_affines_by_name(aff):
    with pytest.raises(ValueError, match="affine"):
        lesion_geometry(np.ones((2, 2, 2), int), aff)


# ----------------------------------------------------------------------------- statistics


def _per_lesion_values(lab, arr, lesion_id):
    v = np.asarray(arr, np.float64)[lab == lesion_id]
    return v[np.isfinite(v)]


@props(150)
@given(data=st.data(), labels=label_images())
def test_lesion_intensity_stats_match_numpy_and_are_ordered(data, labels):
    shape = np.shape(labels)
    maps = {"gd_mM": data.draw(_maps(shape), label="gd_mM"),
            "deltaR1": data.draw(_maps(shape), label="deltaR1")}
    with no_float_warnings():
        stats = lesion_intensity_stats(labels, maps)
    lab = np.asarray(labels).astype(np.int64)
    assert list(stats["lesion_id"]) == list(np.unique(lab[lab > 0]))
    for row in stats.to_dict("records"):
        for name, arr in maps.items():
            v = _per_lesion_values(lab, arr, row["lesion_id"])
            got = {s: row[f"{name}_{s}"] for s in ("mean", "sd", "median", "p25", "p75")}
            if v.size == 0:
                assert all(math.isnan(x) for x in got.values())
                continue
            scale = float(np.abs(v).max())
            tol = {"rtol": 1e-9, "atol": 1e-12 * scale}
            np.testing.assert_allclose(got["mean"], v.mean(), **tol)
            for s, q in (("p25", 25), ("median", 50), ("p75", 75)):
                np.testing.assert_allclose(got[s], np.percentile(v, q), **tol)
            assert v.min() <= got["p25"] <= got["median"] <= got["p75"] <= v.max()
            assert v.min() - 1e-12 * scale <= got["mean"] <= v.max() + 1e-12 * scale
            if v.size >= 2:
                assert got["sd"] >= 0
                np.testing.assert_allclose(got["sd"], v.std(ddof=1), rtol=1e-7,
                                           atol=1e-9 * scale)
            else:
                assert math.isnan(got["sd"])
        v = _per_lesion_values(lab, maps["gd_mM"], row["lesion_id"])
        if v.size:
            assert 0.0 <= row["negative_fraction"] <= 1.0
            assert row["negative_fraction"] == pytest.approx(np.mean(v < 0))
        else:
            assert math.isnan(row["negative_fraction"])


@props(150)
@given(data=st.data(), labels=label_images(),
       width=st.one_of(st.just(0.005), st.floats(1e-6, 1e3)),
       edges=st.lists(st.floats(-1e3, 1e3), min_size=0, max_size=3, unique=True).map(sorted))
def test_concentration_features_are_bounded(data, labels, width, edges):
    shape = np.shape(labels)
    gd = data.draw(_maps(shape), label="gd_mM")
    mass = data.draw(st.one_of(st.none(), _maps(shape)), label="mass_mg_per_L")
    with no_float_warnings():
        feats = lesion_concentration_features(labels, gd, mass, entropy_bin_width_mM=width,
                                              bin_edges_mg_per_L=edges)
    lab = np.asarray(labels).astype(np.int64)
    assert list(feats["lesion_id"]) == list(np.unique(lab[lab > 0]))
    pct_cols = [c for c in feats.columns if c.startswith("vol_pct_mass")]
    # bins <= e1, (e1, e2], ..., > en; no edges, no bins
    assert len(pct_cols) == (0 if mass is None or not edges else len(edges) + 1)
    for row in feats.to_dict("records"):
        for name, arr in (("gd_mM", gd), ("mass_mg_per_L", mass)):
            if arr is None:
                continue
            v = _per_lesion_values(lab, arr, row["lesion_id"])
            got = {s: row[f"{name}_{s}"] for s in ("min", "max", "iqr", "uqmean")}
            if v.size == 0:
                assert all(math.isnan(x) for x in got.values())
                continue
            scale = float(np.abs(v).max())
            assert got["min"] == v.min() and got["max"] == v.max()
            assert got["iqr"] >= 0
            np.testing.assert_allclose(
                got["iqr"], np.percentile(v, 75) - np.percentile(v, 25), rtol=1e-9,
                atol=1e-12 * scale)
            assert v.min() - 1e-12 * scale <= got["uqmean"] <= v.max() + 1e-12 * scale
            assert got["uqmean"] >= np.percentile(v, 75) - 1e-9 * scale
        v = _per_lesion_values(lab, gd, row["lesion_id"])
        if v.size:
            assert 0.0 <= row["gd_entropy_bits"] <= math.log2(v.size) + 1e-12
        else:
            assert math.isnan(row["gd_entropy_bits"])
        if mass is not None and edges:
            pcts = np.array([row[c] for c in pct_cols])
            if _per_lesion_values(lab, mass, row["lesion_id"]).size:
                assert np.all((pcts >= 0) & (pcts <= 100))
                assert pcts.sum() == pytest.approx(100.0)
            else:
                assert np.all(np.isnan(pcts))


@props(60)
@given(data=st.data(), labels=label_images(), aff=affines())
def test_lesion_table_has_one_row_per_lesion(data, labels, aff):
    shape = np.shape(labels)
    maps = {"gd_mM": data.draw(_maps(shape), label="gd_mM"),
            "mass_mg_per_L": data.draw(_maps(shape), label="mass")}
    with no_float_warnings():
        table = lesion_table(labels, aff, maps)
    lab = np.asarray(labels).astype(np.int64)
    assert list(table["lesion_id"]) == list(np.unique(lab[lab > 0]))
    assert table["lesion_id"].is_unique


@props(60)
@given(columns=st.lists(st.one_of(
    st.text(max_size=30),
    st.sampled_from(["gd_mM_mean", "mass_mg_per_L_uqmean", "vol_pct_mass_50_to_100_mg_per_L",
                     "vol_pct_mass_gt_1e+03_mg_per_L", "t1_D0_s_p25", "r1__per_s_sd", "_",
                     "x_sd", "se_percent_median", "deltaR1_loq"])), max_size=8))
def test_column_dictionary_never_raises(columns):
    entries = column_dictionary(columns)
    assert set(entries) == {str(c) for c in columns}
    for entry in entries.values():
        assert isinstance(entry["LongName"], str) and isinstance(entry["Description"], str)
        assert isinstance(entry.get("Units", ""), str)


# ----------------------------------------------------------------------------- LoQ, controls


@props(80)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6)),
    sizes=st.lists(st.integers(0, 400), min_size=0, max_size=4),
    k=st.sampled_from([10.0, 3.3]),
)
def test_limit_of_quantification_is_nan_or_non_negative(data, shape, sizes, k):
    dr1 = data.draw(hnp.arrays(np.float32, shape, elements=st.one_of(
        st.floats(-1.0, 1.0, width=32), map_values)), label="dr1")
    normal = data.draw(st.one_of(st.just(np.ones(shape, bool)), hnp.arrays(np.bool_, shape)),
                       label="normal")
    with no_float_warnings():
        loq = limit_of_quantification(dr1, normal, sizes, k=k)
    assert loq.shape == (len(sizes),) and loq.dtype == np.float64
    assert np.all(np.isnan(loq) | (np.isfinite(loq) & (loq >= 0)))
    # one cube size, one limit
    for (a, la), (b, lb) in itertools.combinations(zip(sizes, loq, strict=True), 2):
        if max(1, round(a ** (1 / 3))) == max(1, round(b ** (1 / 3))):
            assert la == lb or (math.isnan(la) and math.isnan(lb))


@props(40)
@given(shape=st.tuples(st.integers(3, 12), st.integers(3, 12), st.integers(1, 6)),
       value=st.floats(-1e3, 1e3), sizes=st.lists(st.integers(1, 30), min_size=1, max_size=3))
def test_limit_of_quantification_of_a_constant_map_is_zero(shape, value, sizes):
    """No scatter between regions, no limit (or NaN when too few regions fit)."""
    with no_float_warnings():
        loq = limit_of_quantification(np.full(shape, value), np.ones(shape, bool), sizes)
    assert np.all(np.isnan(loq) | (np.abs(loq) <= 1e-9 * max(abs(value), 1.0)))


@props(120)
@given(data=st.data(),
       shape=st.tuples(st.integers(1, 14), st.integers(1, 14), st.integers(1, 8)),
       aff=affines(orthogonal=True),
       n_rois=st.integers(0, 4),
       radius=st.one_of(st.none(), st.floats(0.5, 20.0)),
       margin=st.floats(0.0, 20.0))
def test_control_rois_lie_in_tissue_away_from_lesions(data, shape, aff, n_rois, radius,
                                                      margin):
    labels = data.draw(label_images(shape=shape), label="labels")
    tissue = data.draw(st.one_of(st.just(np.ones(shape, bool)),
                                 hnp.arrays(np.bool_, shape)), label="tissue")
    with no_float_warnings():
        rois = control_rois(labels, tissue, aff, n_rois=n_rois, radius_mm=radius,
                            margin_mm=margin)
    assert rois.shape == shape and rois.dtype == np.int16
    found = np.unique(rois[rois > 0])
    assert list(found) == list(range(1, found.size + 1)) and found.size <= n_rois
    lab = np.asarray(labels).astype(np.int64)
    assert np.all(tissue[rois > 0]) and not np.any(lab[rois > 0])
    if radius is None:
        counts = np.unique(lab[lab > 0], return_counts=True)[1]
        radius = max(4.0, float(np.median(np.cbrt(
            3 * counts * abs(np.linalg.det(aff[:3, :3])) / (4 * np.pi))))) if counts.size \
            else 5.0
    lesion_xyz = np.argwhere(lab > 0) @ aff[:3, :3].T
    for number in found:
        xyz = np.argwhere(rois == number) @ aff[:3, :3].T
        # a sphere of the radius: no two of its voxels more than a diameter apart
        assert _brute_diameter(xyz) <= 2 * radius * (1 + 1e-9)
        if lesion_xyz.size:  # at least margin_mm from every lesion voxel
            d = np.sqrt(((xyz[:, None, :] - lesion_xyz[None, :, :]) ** 2).sum(-1)).min()
            assert d >= margin * (1 - 1e-9) - 1e-9


# ----------------------------------------------------------------------------- profiles


@props(100)
@given(data=st.data(), labels=label_images(), aff=affines(orthogonal=True),
       ring=st.floats(0.0, 10.0), extent=st.floats(0.0, 3.0))
def test_line_profiles_are_consistent(data, labels, aff, ring, extent):
    values = data.draw(_maps(np.shape(labels)), label="values")
    with no_float_warnings():
        profiles, summary = line_profiles(labels, aff, values, ring_mm=ring, extent=extent)
    lab = np.asarray(labels).astype(np.int64)
    ids = list(np.unique(lab[lab > 0]))
    assert list(summary["lesion_id"]) == ids
    if not ids:
        assert profiles.empty
        return
    assert set(profiles["lesion_id"]) <= set(ids)
    assert set(profiles["direction"]) <= {"RL", "AP"}
    assert profiles["inside"].dtype == bool or profiles.empty
    finite_ring = summary["ring_mean"].astype(float).dropna()
    assert np.all(np.isfinite(finite_ring))
    ratio = summary["peak_to_valley_ratio"].astype(float).dropna()
    assert np.all(np.isfinite(ratio) & (ratio >= 1.0))
    # outside the lesion a profile shows the ring mean of its lesion
    merged = profiles.merge(summary, on="lesion_id")
    outside = merged[~merged["inside"]]
    np.testing.assert_array_equal(outside["value"].to_numpy(), outside["ring_mean"].to_numpy())
    # each profile runs through the centroid: position 0 is on it, once per direction
    for (_, _), group in profiles.groupby(["lesion_id", "direction"]):
        assert (group["position_mm"] == 0).sum() == 1


# ----------------------------------------------------------------------------- persistence

ratio_values = st.one_of(st.floats(-1e3, 1e3), st.floats(allow_nan=False, width=32),
                         st.sampled_from([0.0, math.nan]))


@props(50)
@given(data=st.data(), n=st.integers(0, 5))
def test_persistence_ratios_nan_or_late_over_early(data, n):
    ids = data.draw(st.lists(st.integers(1, 50), min_size=n, max_size=n, unique=True),
                    label="ids")
    cols = ("se_percent_mean", "gd_mM_mean", "mass_mg_per_L_mean")

    def table(label, timepoint):
        values = {c: data.draw(st.lists(ratio_values, min_size=n, max_size=n),
                               label=f"{label} {c}") for c in cols}
        return pd.DataFrame({"lesion_id": ids, "timepoint": timepoint, **values})

    early, late = table("early", "D1"), table("late", "D8")
    late = late.sample(frac=1.0, random_state=0)  # row order must not matter
    with no_float_warnings():
        out = persistence_table(early, late)
    assert sorted(out["lesion_id"]) == sorted(ids)
    for c in cols:
        e, la, r = (out[f"{c}_{s}"].to_numpy(float) for s in ("early", "late", "ratio"))
        assert np.all(np.isnan(r[~(e > 0)]))  # early <= 0 or NaN: no ratio
        ok = (e > 0) & np.isfinite(la)
        with np.errstate(over="ignore"):
            expected = la[ok] / e[ok]
        np.testing.assert_array_equal(r[ok], expected)


# ----------------------------------------------------------------------------- regressions
# Minimal failing examples found by the properties above (see the fixes' comments).


def test_regression_concentration_features_without_bin_edges():
    # bin_edges_mg_per_L=() raised "TypeError: unsupported format string passed to
    # NoneType.__format__" (a None-None bin)
    labels = np.ones((2, 2, 1), int)
    feats = lesion_concentration_features(labels, np.zeros((2, 2, 1)), np.zeros((2, 2, 1)),
                                          bin_edges_mg_per_L=())
    assert not [c for c in feats.columns if c.startswith("vol_pct_mass")]
    assert feats["mass_mg_per_L_max"].tolist() == [0.0]


def test_regression_entropy_of_huge_concentrations():
    # floor(C / 0.005) beyond 2**63 overflowed the int64 cast (RuntimeWarning) and put
    # every such voxel into one bin: 0 bits for two clearly different values
    labels = np.ones((2, 1, 1), int)
    gd = np.array([4.6e16, 9.3e16]).reshape(2, 1, 1)
    with no_float_warnings():
        feats = lesion_concentration_features(labels, gd)
    assert feats["gd_entropy_bits"].tolist() == [1.0]
    # -0.0 and 0.0 share a bin, as with the integer bins
    feats = lesion_concentration_features(labels, np.array([-0.0, 0.0]).reshape(2, 1, 1))
    assert feats["gd_entropy_bits"].tolist() == [0.0]


def test_regression_zero_control_rois():
    # n_rois=0 returned one sphere (the first is placed before the count is checked)
    rois = control_rois(np.zeros((6, 1, 1), int), np.ones((6, 1, 1), bool), np.eye(4),
                        n_rois=0)
    assert not rois.any()
    with pytest.raises(ValueError, match="n_rois"):
        control_rois(np.zeros((6, 1, 1), int), np.ones((6, 1, 1), bool), np.eye(4), n_rois=-1)
    with pytest.raises(ValueError, match="radius_mm"):
        control_rois(np.zeros((6, 1, 1), int), np.ones((6, 1, 1), bool), np.eye(4),
                     radius_mm=0.0)


def test_regression_control_rois_in_tissue_filling_the_grid():
    # with no background voxel scipy's EDT measured from a virtual corner (-1, -1, -1):
    # candidate centres reached the far faces and those spheres were cut by the grid
    shape = (11, 11, 11)
    with no_float_warnings():
        rois = control_rois(np.zeros(shape, int), np.ones(shape, bool), np.eye(4), n_rois=3,
                            radius_mm=2.5, margin_mm=0.0)
    offsets = np.indices((7, 7, 7)).reshape(3, -1).T - 3
    full_sphere = int((np.linalg.norm(offsets, axis=1) <= 2.5).sum())
    counts = np.bincount(rois.ravel())[1:]
    assert counts.tolist() == [full_sphere] * 3


def test_regression_large_lesion_ids_do_not_allocate_per_id():
    # np.bincount over the label values allocated 8 bytes per integer up to the largest id
    # (16 GB for 2**31 - 1) in line_profiles and control_rois
    import tracemalloc

    labels = np.zeros((6, 6, 6), np.int64)
    labels[2:4, 2:4, 2:4] = 2**31 - 1
    tracemalloc.start()
    try:
        _, summary = line_profiles(labels, np.eye(4), np.ones((6, 6, 6)))
        control_rois(labels, np.ones((6, 6, 6), bool), np.eye(4))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary["lesion_id"].tolist() == [2**31 - 1]
    assert peak < 20 * 2**20


@pytest.mark.parametrize("sizes", [[-5], [math.nan], [math.inf]])
def test_regression_limit_of_quantification_bad_sizes(sizes):
    # -5 raised "TypeError: type complex doesn't define __round__", NaN "cannot convert
    # float NaN to integer"
    with pytest.raises(ValueError, match="n_voxels"):
        limit_of_quantification(np.zeros((5, 5, 5)), np.ones((5, 5, 5), bool), sizes)


def test_regression_limit_of_quantification_of_a_lesion_larger_than_the_grid():
    # a 1e30-voxel size filtered with a 1e10-wide window: MemoryError
    with no_float_warnings():
        loq = limit_of_quantification(np.zeros((5, 5, 5)), np.ones((5, 5, 5), bool), [1e30, 1])
    assert math.isnan(loq[0]) and loq[1] == 0.0
