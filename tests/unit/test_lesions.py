"""Tests for per-lesion geometry, intensity statistics and the data dictionary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from bids_agquant.lesions import (
    GEOMETRY_COLUMNS,
    column_dictionary,
    lesion_geometry,
    lesion_intensity_stats,
    lesion_table,
)


def _affine(voxel_mm=(1.0, 1.0, 1.0), rotation=None, origin=(0.0, 0.0, 0.0)):
    aff = np.eye(4)
    lin = np.diag(voxel_mm)
    if rotation is not None:
        lin = rotation @ lin
    aff[:3, :3] = lin
    aff[:3, 3] = origin
    return aff


def _sphere(radius_mm, voxel_mm, label=1):
    """Voxelised sphere: voxels whose centre is within radius_mm of a voxel centre."""
    vox = np.asarray(voxel_mm, dtype=float)
    half = np.ceil(radius_mm / vox).astype(int) + 2
    shape = tuple(2 * half + 1)
    grids = np.meshgrid(
        *[(np.arange(n) - h) * v for n, h, v in zip(shape, half, vox, strict=True)], indexing="ij"
    )
    r2 = sum(g**2 for g in grids)
    labels = np.zeros(shape, dtype=np.int16)
    labels[r2 <= radius_mm**2] = label
    return labels


def _brute_feret(points):
    d = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((d**2).sum(-1).max()))


def _world(labels, affine, label):
    ijk = np.argwhere(labels == label).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize(
    ("volume_ml", "diameter_mm"), [(0.5236, 10.0), (4.189, 20.0), (1.0, 12.41)]
)
def test_T11_equivalent_diameter_formula(volume_ml, diameter_mm):
    """seeds-facts T11, through lesion_geometry: n voxels of volume V/n."""
    n = 1000
    voxel_mm3 = volume_ml * 1000.0 / n
    side = voxel_mm3 ** (1 / 3)
    labels = np.zeros((10, 10, 12), dtype=np.uint8)
    labels[:10, :10, :10] = 1
    geom = lesion_geometry(labels, _affine((side, side, side)))
    assert geom.loc[0, "volume_ml"] == pytest.approx(volume_ml, rel=1e-9)
    assert geom.loc[0, "equiv_diameter_mm"] == pytest.approx(diameter_mm, rel=1e-3)


# --------------------------------------------------------------------------- spheres


@pytest.mark.parametrize("voxel", [1.0, 2.0])
def test_voxelised_sphere_diameters(voxel):
    labels = _sphere(10.0, (voxel,) * 3)
    geom = lesion_geometry(labels, _affine((voxel,) * 3))
    row = geom.iloc[0]
    assert abs(row["equiv_diameter_mm"] - 20.0) <= voxel
    assert abs(row["longest_diameter_mm"] - 20.0) <= voxel
    assert row["volume_ml"] == pytest.approx(row["n_voxels"] * voxel**3 / 1000)
    assert bool(row["measurable"])


def test_sphere_centroid_and_feret_match_brute_force():
    labels = _sphere(6.0, (1.0, 1.0, 1.0))
    aff = _affine(origin=(-10.0, 20.0, 5.0))
    geom = lesion_geometry(labels, aff)
    pts = _world(labels, aff, 1)
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(_brute_feret(pts), abs=1e-9)
    centre = np.array(labels.shape, float) // 2
    expected = centre + aff[:3, 3]
    np.testing.assert_allclose(
        geom.loc[0, ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(float),
        expected,
        atol=1e-9,
    )


def test_irregular_blob_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = (rng.random((12, 10, 8)) > 0.6).astype(np.uint8)
    aff = _affine(
        (0.9, 1.3, 2.1), Rotation.from_euler("xyz", [10, 25, -40], degrees=True).as_matrix()
    )
    geom = lesion_geometry(labels, aff)
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(
        _brute_feret(_world(labels, aff, 1)), abs=1e-9
    )


# --------------------------------------------------------------------------- anisotropy, obliquity


def test_anisotropic_box():
    labels = np.zeros((6, 7, 8), dtype=np.int32)
    labels[1:4, 1:5, 1:6] = 2  # 3 x 4 x 5 voxels
    vox = (0.5, 1.0, 2.5)
    geom = lesion_geometry(labels, _affine(vox))
    row = geom.iloc[0]
    assert row["lesion_id"] == 2
    assert row["n_voxels"] == 60
    assert row["volume_ml"] == pytest.approx(60 * 0.5 * 1.0 * 2.5 / 1000)
    # corner-to-corner distance between voxel centres
    expected = np.sqrt((2 * 0.5) ** 2 + (3 * 1.0) ** 2 + (4 * 2.5) ** 2)
    assert row["longest_diameter_mm"] == pytest.approx(expected)
    assert row["centroid_x_mm"] == pytest.approx(2 * 0.5)
    assert row["centroid_y_mm"] == pytest.approx(2.5 * 1.0)
    assert row["centroid_z_mm"] == pytest.approx(3 * 2.5)


def test_oblique_affine_is_physically_invariant():
    labels = np.zeros((20, 16, 12), dtype=np.int32)
    labels[2:15, 3:9, 4:7] = 1
    labels[16:18, 10:14, 2:10] = 5
    vox = (0.8, 1.2, 3.0)
    rot = Rotation.from_euler("zyx", [30, -20, 45], degrees=True).as_matrix()
    origin = np.array([-90.0, 110.0, -60.0])
    straight = lesion_geometry(labels, _affine(vox))
    oblique = lesion_geometry(labels, _affine(vox, rot, origin))
    for col in ("n_voxels", "volume_ml", "equiv_diameter_mm", "longest_diameter_mm", "measurable"):
        np.testing.assert_allclose(
            oblique[col].to_numpy(float), straight[col].to_numpy(float), rtol=1e-10
        )
    cols = ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    expected = straight[cols].to_numpy() @ rot.T + origin
    np.testing.assert_allclose(oblique[cols].to_numpy(), expected, atol=1e-9)
    # the line of 13 voxels along i with 0.8 mm steps sets lesion 1's long axis
    box = np.sqrt((12 * 0.8) ** 2 + (5 * 1.2) ** 2 + (2 * 3.0) ** 2)
    assert oblique.loc[0, "longest_diameter_mm"] == pytest.approx(box)


def test_left_handed_affine_gives_positive_volume():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    aff = _affine((-1.0, 1.0, 2.0))  # LAS-like flip
    geom = lesion_geometry(labels, aff)
    assert geom.loc[0, "volume_ml"] == pytest.approx(8 * 2.0 / 1000)


# --------------------------------------------------------------------------- measurability


def test_10mm_boundary_is_measurable():
    labels = np.zeros((15, 3, 3), dtype=np.uint8)
    labels[2:13, 1, 1] = 1  # 11 voxel centres at 1 mm spacing: 10.0 mm
    geom = lesion_geometry(labels, _affine())
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(10.0, abs=1e-12)
    assert bool(geom.loc[0, "measurable"])
    labels[12, 1, 1] = 0  # 10 centres: 9 mm
    geom = lesion_geometry(labels, _affine())
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(9.0)
    assert not bool(geom.loc[0, "measurable"])


def test_boundary_with_inexact_voxel_size_and_custom_threshold():
    labels = np.zeros((16, 3, 3), dtype=np.uint8)
    labels[1:13, 1, 1] = 1  # 12 centres, 11 steps of 10/11 mm (not exact in binary)
    geom = lesion_geometry(labels, _affine((10 / 11, 1.0, 1.0)))
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(10.0)
    assert bool(geom.loc[0, "measurable"])
    geom = lesion_geometry(labels, _affine((10 / 11, 1.0, 1.0)), measurable_threshold_mm=5.0)
    assert bool(geom.loc[0, "measurable"])
    geom = lesion_geometry(labels, _affine((10 / 11, 1.0, 1.0)), measurable_threshold_mm=10.5)
    assert not bool(geom.loc[0, "measurable"])


# --------------------------------------------------------------------------- degenerate lesions


def test_single_voxel_and_small_lesions():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[5, 5, 5] = 1
    labels[1, 1, 1:3] = 2  # two voxels
    labels[7:9, 1:3, 8] = 3  # four coplanar voxels
    geom = lesion_geometry(labels, _affine((1.0, 1.0, 2.0)))
    assert geom["lesion_id"].tolist() == [1, 2, 3]
    assert geom.loc[0, "longest_diameter_mm"] == 0.0
    assert geom.loc[0, "n_voxels"] == 1
    assert not bool(geom.loc[0, "measurable"])
    assert geom.loc[1, "longest_diameter_mm"] == pytest.approx(2.0)
    assert geom.loc[2, "longest_diameter_mm"] == pytest.approx(np.sqrt(2.0))


def test_large_coplanar_lesion_oblique():
    """A single-slice disc (> brute-force size) in an oblique grid: Qhull 3-D fails."""
    labels = np.zeros((30, 30, 5), dtype=np.int32)
    ii, jj = np.mgrid[:30, :30]
    labels[..., 2][(ii - 15) ** 2 + (jj - 15) ** 2 <= 12**2] = 4
    rot = Rotation.from_euler("xyz", [15, 30, 5], degrees=True).as_matrix()
    aff = _affine((0.7, 0.7, 4.0), rot, (3.0, -2.0, 1.0))
    geom = lesion_geometry(labels, aff)
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(
        _brute_feret(_world(labels, aff, 4)), rel=1e-9
    )
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(24 * 0.7)


def test_large_colinear_lesion():
    labels = np.zeros((3, 120, 3), dtype=np.int32)
    labels[1, 5:105, 1] = 9  # 100 voxels in a line
    rot = Rotation.from_euler("z", 33, degrees=True).as_matrix()
    geom = lesion_geometry(labels, _affine((1.0, 0.5, 1.0), rot))
    assert geom.loc[0, "longest_diameter_mm"] == pytest.approx(99 * 0.5)
    assert bool(geom.loc[0, "measurable"])


def test_empty_label_image():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    geom = lesion_geometry(labels, _affine())
    assert list(geom.columns) == list(GEOMETRY_COLUMNS)
    assert len(geom) == 0
    stats = lesion_intensity_stats(labels, {"gd_mM": np.zeros((4, 4, 4))})
    assert len(stats) == 0
    assert "negative_fraction" in stats.columns
    assert len(lesion_table(labels, _affine(), {"gd_mM": np.zeros((4, 4, 4))})) == 0


def test_geometry_input_validation():
    with pytest.raises(ValueError, match="3-D"):
        lesion_geometry(np.zeros((4, 4)), _affine())
    with pytest.raises(ValueError, match="4x4"):
        lesion_geometry(np.zeros((4, 4, 4)), np.eye(3))
    with pytest.raises(ValueError, match="integer"):
        lesion_geometry(np.full((2, 2, 2), 0.5), _affine())
    with pytest.raises(ValueError, match=">= 0"):
        lesion_geometry(np.full((2, 2, 2), -1), _affine())
    with pytest.raises(ValueError, match="singular"):
        lesion_geometry(np.ones((2, 2, 2), dtype=int), np.diag([1.0, 0.0, 1.0, 1.0]))
    # integral float labels (e.g. after nearest-neighbour resampling) are fine
    geom = lesion_geometry(np.ones((2, 2, 2), dtype=np.float32) * 3, _affine())
    assert geom["lesion_id"].tolist() == [3]
    assert geom["lesion_id"].dtype == np.int64


# --------------------------------------------------------------------------- intensity stats


def _two_lesions():
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, :4] = 3
    labels[0, 1, :3] = 3  # lesion 3: 7 voxels
    labels[2, 2, :4] = 7  # lesion 7: 4 voxels
    labels[3, 3, 3] = 8  # lesion 8: a single voxel
    gd = np.full((4, 4, 4), 100.0)  # background values must not leak in
    gd[0, 0, :4] = [-0.2, 0.1, 0.4, np.nan]
    gd[0, 1, :3] = [0.3, -0.1, np.inf]
    gd[2, 2, :4] = [1.0, 2.0, 3.0, 4.0]
    gd[3, 3, 3] = -5.0
    return labels, gd


def test_intensity_stats_known_values():
    labels, gd = _two_lesions()
    t1 = np.where(labels > 0, 1.5, np.nan)
    stats = lesion_intensity_stats(labels, {"gd_mM": gd, "t1_baseline_s": t1})
    assert stats["lesion_id"].tolist() == [3, 7, 8]
    expected_cols = ["lesion_id"] + [f"gd_mM_{s}" for s in ("mean", "sd", "median", "p25", "p75")]
    assert list(stats.columns[:6]) == expected_cols
    assert "t1_baseline_s_p75" in stats.columns

    v3 = np.array([-0.2, 0.1, 0.4, 0.3, -0.1])  # NaN and inf ignored, negatives kept
    v7 = np.array([1.0, 2.0, 3.0, 4.0])
    for row, v in ((0, v3), (1, v7)):
        assert stats.loc[row, "gd_mM_mean"] == pytest.approx(v.mean())
        assert stats.loc[row, "gd_mM_sd"] == pytest.approx(v.std(ddof=1))
        assert stats.loc[row, "gd_mM_median"] == pytest.approx(np.median(v))
        assert stats.loc[row, "gd_mM_p25"] == pytest.approx(np.percentile(v, 25))
        assert stats.loc[row, "gd_mM_p75"] == pytest.approx(np.percentile(v, 75))
    assert stats.loc[0, "negative_fraction"] == pytest.approx(2 / 5)
    assert stats.loc[1, "negative_fraction"] == 0.0
    # single voxel: sd NaN, other statistics equal the value
    assert np.isnan(stats.loc[2, "gd_mM_sd"])
    for s in ("mean", "median", "p25", "p75"):
        assert stats.loc[2, f"gd_mM_{s}"] == -5.0
    assert stats.loc[2, "negative_fraction"] == 1.0
    assert stats.loc[0, "gd_mM_mean"] < 0.2  # not clipped
    np.testing.assert_allclose(stats["t1_baseline_s_mean"], 1.5)


def test_intensity_stats_all_nan_lesion_and_no_gd_map():
    labels, _ = _two_lesions()
    m = np.where(labels == 7, np.nan, 2.0)
    stats = lesion_intensity_stats(labels, {"deltaR1": m})
    assert "negative_fraction" not in stats.columns
    assert stats.loc[1, ["deltaR1_mean", "deltaR1_sd", "deltaR1_median"]].isna().all()
    assert stats.loc[0, "deltaR1_mean"] == 2.0
    assert stats.loc[0, "deltaR1_sd"] == 0.0


def test_intensity_stats_match_numpy_on_random_data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, size=(15, 14, 13)) * 2  # ids 2, 4, ..., 10
    values = rng.normal(0.0, 1.0, size=labels.shape)
    values[rng.random(labels.shape) < 0.1] = np.nan
    stats = lesion_intensity_stats(labels, {"gd_mM": values})
    for _, row in stats.iterrows():
        v = values[labels == row["lesion_id"]]
        v = v[np.isfinite(v)]
        assert row["gd_mM_mean"] == pytest.approx(v.mean())
        assert row["gd_mM_sd"] == pytest.approx(v.std(ddof=1))
        np.testing.assert_allclose(
            row[["gd_mM_p25", "gd_mM_median", "gd_mM_p75"]].to_numpy(float),
            np.percentile(v, [25, 50, 75]),
        )
        assert row["negative_fraction"] == pytest.approx(np.mean(v < 0))


def test_intensity_stats_shape_mismatch():
    labels, _ = _two_lesions()
    with pytest.raises(ValueError, match="shape"):
        lesion_intensity_stats(labels, {"gd_mM": np.zeros((4, 4, 3))})


# --------------------------------------------------------------------------- table, dictionary


def test_lesion_table_merges_on_lesion_id():
    labels, gd = _two_lesions()
    table = lesion_table(labels, _affine((2.0, 2.0, 2.0)), {"gd_mM": gd})
    assert table["lesion_id"].tolist() == [3, 7, 8]
    assert list(table.columns[: len(GEOMETRY_COLUMNS)]) == list(GEOMETRY_COLUMNS)
    assert table["n_voxels"].tolist() == [7, 4, 1]
    assert table["measurable"].dtype == bool
    assert table.loc[1, "gd_mM_mean"] == pytest.approx(2.5)
    assert table.loc[1, "longest_diameter_mm"] == pytest.approx(6.0)
    only_geometry = lesion_table(labels, _affine(), {})
    assert list(only_geometry.columns) == list(GEOMETRY_COLUMNS)


def test_column_dictionary():
    labels, gd = _two_lesions()
    table = lesion_table(
        labels,
        _affine(),
        {
            "gd_mM": gd,
            "mass_mg_per_L": gd * 1000,
            "deltaR1": gd,
            "t1_baseline_s": gd,
            "t1_post_s": gd,
            "se_percent": gd,
        },
    )
    cols = ["timepoint", *table.columns, "something_unknown", "weird"]
    d = column_dictionary(cols)
    assert set(d) == set(cols)
    for entry in d.values():
        assert entry["LongName"] and entry["Description"]
    assert d["gd_mM_mean"]["Units"] == "mmol/L"
    assert d["gd_mM_p75"]["Units"] == "mmol/L"
    assert d["mass_mg_per_L_mean"]["Units"] == "mg/L"
    assert d["deltaR1_sd"]["Units"] == "1/s"
    assert d["t1_baseline_s_mean"]["Units"] == "s"
    assert d["t1_post_s_median"]["Units"] == "s"
    assert d["se_percent_mean"]["Units"] == "%"
    assert d["volume_ml"]["Units"] == "mL"
    for col in ("equiv_diameter_mm", "longest_diameter_mm", "centroid_x_mm"):
        assert d[col]["Units"] == "mm"
    for col in ("lesion_id", "timepoint", "measurable", "n_voxels", "negative_fraction"):
        assert "Units" not in d[col]
        assert d[col]["Description"]
    assert "no description" in d["weird"]["Description"]
    assert "ddof=1" in d["gd_mM_sd"]["Description"]
    # unknown map statistic: generic, units guessed from suffix, never raises
    assert column_dictionary(["foo_per_s_mean"])["foo_per_s_mean"]["Units"] == "1/s"
    assert column_dictionary(pd.Index([])) == {}


# --------------------------------------------------------------------------- issue 4 features


def test_concentration_features_match_numpy_and_known_histograms():
    from bids_agquant.lesions import lesion_concentration_features

    rng = np.random.default_rng(3)
    labels = np.zeros((10, 10, 10), np.int16)
    labels[1:5, 1:5, 1:5] = 1  # 64 voxels
    labels[6:9, 6:9, 6:9] = 2  # 27 voxels
    gd = rng.normal(0.05, 0.03, labels.shape)
    gd[labels == 2] = 0.0123  # one histogram bin: entropy 0
    mass = gd * 1000.0
    table = lesion_concentration_features(labels, gd, mass, entropy_bin_width_mM=0.005,
                                          bin_edges_mg_per_L=(50.0, 100.0)).set_index("lesion_id")
    v = gd[labels == 1]
    p25, p75 = np.percentile(v, [25, 75])
    row = table.loc[1]
    assert row["gd_mM_min"] == v.min() and row["gd_mM_max"] == v.max()
    assert row["gd_mM_iqr"] == pytest.approx(p75 - p25)
    assert row["gd_mM_uqmean"] == pytest.approx(v[v >= p75].mean())
    counts = np.unique(np.floor(v / 0.005), return_counts=True)[1] / v.size
    assert row["gd_entropy_bits"] == pytest.approx(-(counts * np.log2(counts)).sum())
    m = mass[labels == 1]
    assert row["vol_pct_mass_le_50_mg_per_L"] == pytest.approx(100 * np.mean(m <= 50))
    assert row["vol_pct_mass_50_to_100_mg_per_L"] == pytest.approx(
        100 * np.mean((m > 50) & (m <= 100)))
    assert row["vol_pct_mass_gt_100_mg_per_L"] == pytest.approx(100 * np.mean(m > 100))
    assert table.loc[2, "gd_entropy_bits"] == 0.0
    assert table.loc[2, "vol_pct_mass_le_50_mg_per_L"] == 100.0
    # two equally filled bins: exactly one bit
    half = np.where(np.arange(labels.size).reshape(labels.shape) % 2 == 0, 0.001, 0.011)
    two = lesion_concentration_features((labels == 1).astype(int), half)
    assert two["gd_entropy_bits"].iloc[0] == pytest.approx(1.0)


def test_axial_diameter_is_in_plane_and_the_dictionary_describes_new_columns():
    from bids_agquant.lesions import column_dictionary, lesion_geometry

    # A rod along z (superior): 3-D diameter is its length, axial diameter its width.
    labels = np.zeros((20, 20, 30), np.int16)
    labels[9:12, 9:12, 2:27] = 1  # 3 x 3 voxels in-plane, 25 voxels long
    geom = lesion_geometry(labels, np.diag([1.0, 1.0, 1.0, 1.0])).iloc[0]
    assert geom["longest_diameter_mm"] == pytest.approx(np.sqrt(2 * 2**2 + 24**2))
    assert geom["longest_axial_diameter_mm"] == pytest.approx(np.sqrt(2 * 2**2))
    # With a permuted affine the superior axis is voxel axis 0: the "slices" follow it.
    permuted = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    rod_x = np.transpose(labels, (2, 1, 0))
    geom_p = lesion_geometry(rod_x, permuted).iloc[0]
    assert geom_p["longest_axial_diameter_mm"] == pytest.approx(np.sqrt(2 * 2**2))
    entries = column_dictionary(["longest_axial_diameter_mm", "gd_entropy_bits",
                                 "gd_mM_uqmean", "vol_pct_mass_gt_100_mg_per_L",
                                 "percent_injected_dose_per_g"])
    assert entries["gd_mM_uqmean"]["Units"] == "mmol/L"
    assert entries["vol_pct_mass_gt_100_mg_per_L"]["Units"] == "%"
    assert entries["gd_entropy_bits"]["Units"] == "bit"
    assert "RECIST" in entries["longest_axial_diameter_mm"]["LongName"]


def test_limit_of_quantification_of_white_noise_scales_with_lesion_size():
    from bids_agquant.lesions import limit_of_quantification

    rng = np.random.default_rng(11)
    sigma = 0.05
    dr1 = rng.normal(0.0, sigma, (60, 60, 60))
    normal = np.ones(dr1.shape, bool)
    loq = limit_of_quantification(dr1, normal, [27, 216])
    # mean of n independent voxels: SD sigma / sqrt(n); LoQ = 10 SD
    np.testing.assert_allclose(loq, 10 * sigma / np.sqrt([27, 216]), rtol=0.06)
    # too little normal tissue: n/a, never a made-up limit
    tiny = np.zeros(dr1.shape, bool)
    tiny[:4, :4, :4] = True
    assert np.isnan(limit_of_quantification(dr1, tiny, [27])[0])


def test_control_rois_are_disjoint_healthy_and_away_from_lesions():
    from bids_agquant.lesions import control_rois

    shape = (60, 60, 60)
    grid = np.indices(shape)
    brain = ((grid - 29.5) ** 2).sum(axis=0) <= 27**2
    labels = np.zeros(shape, np.int16)
    labels[((grid - np.array([40, 30, 30])[:, None, None, None]) ** 2).sum(axis=0) <= 16] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rois = control_rois(labels, brain, affine)
    assert set(np.unique(rois)) == {0, 1, 2, 3}
    assert not (rois[labels > 0]).any() and not rois[~brain].any()
    spacing = (2.0, 2.0, 2.0)
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(labels == 0, sampling=spacing)
    assert distance[rois > 0].min() >= 10.0  # the margin
    sizes = np.bincount(rois.ravel())[1:]
    assert sizes.min() > 0.8 * sizes.max()  # similar sizes
    np.testing.assert_array_equal(rois, control_rois(labels, brain, affine))  # deterministic


def test_line_profiles_central_minimum_and_ring_baseline():
    from bids_agquant.lesions import line_profiles

    shape = (40, 40, 40)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(((grid - 20.0) ** 2).sum(axis=0))
    labels = (r <= 5.0).astype(np.int16)
    # central minimum: 50 mg/L in the centre, 80 at the rim (peak-to-valley 1.6, as the
    # NanoBrainMets central-minimum lesions); 10 mg/L in the surrounding tissue
    values = np.where(labels > 0, 50 + 30 * (r / 5.0) ** 2, 10.0)
    profiles, summary = line_profiles(labels, np.eye(4), values, ring_mm=3.0)
    assert summary.loc[0, "ring_mean"] == pytest.approx(10.0)
    assert summary.loc[0, "peak_to_valley_ratio"] == pytest.approx(1.6)
    for direction in ("RL", "AP"):
        prof = profiles[profiles["direction"] == direction].set_index("position_mm")
        assert prof.loc[0.0, "value"] == pytest.approx(50.0)
        assert (prof.loc[prof.index.to_numpy() > 5.0, "value"] == 10.0).all()
        assert prof["inside"].sum() == 11  # -5..5 mm through the centre
    # a flipped x axis: positions still increase towards world R
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    values_skew = values + np.where(labels > 0, grid[0], 0.0)  # higher at larger i (= left)
    prof_f, _ = line_profiles(labels, flipped, values_skew)
    rl = prof_f[(prof_f["direction"] == "RL") & prof_f["inside"]].set_index("position_mm")
    assert rl.loc[-5.0, "value"] > rl.loc[5.0, "value"]  # left (i large) is negative R


def test_persistence_table_ratios_reproduce_nanorad():
    """T13: D8/D1 SE ratios 32.4/175.8 = 0.18, 14/58.3 = 0.24, 26.3/154.1 = 0.17."""
    from bids_agquant.lesions import persistence_table

    early = pd.DataFrame({"lesion_id": [13, 14, 15, 16], "timepoint": "ses-D1",
                          "se_percent_mean": [175.8, 58.3, 154.1, 0.0],
                          "gd_mM_mean": [0.0575, 0.0203, 0.0295, -0.001]})
    late = pd.DataFrame({"lesion_id": [16, 15, 14, 13], "timepoint": "ses-D8",
                         "se_percent_mean": [1.0, 26.3, 14.0, 32.4],
                         "gd_mM_mean": [0.0, 0.003, 0.002, 0.01],
                         "quantification": ["<LoQ", "<LoQ", "<LoQ", "quantified"]})
    table = persistence_table(early, late).set_index("lesion_id")
    np.testing.assert_allclose(table.loc[[13, 14, 15], "se_percent_mean_ratio"],
                               [0.18, 0.24, 0.17], atol=0.005)
    assert np.isnan(table.loc[16, "se_percent_mean_ratio"])  # early <= 0: no ratio
    assert np.isnan(table.loc[16, "gd_mM_mean_ratio"])
    assert table.loc[13, "late_quantification"] == "quantified"
    assert "mass_mg_per_L_mean_ratio" not in table  # absent from both: skipped
