"""Group-level analyses (``bids_agquant.group``) and outputs (``bids_agquant.cli.group``).

Known truths: the seeds-facts §1.11 test vectors (T1, T9–T15) and synthetic tables with exactly
known lines, clusters and group statistics.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from bids_agquant import group
from bids_agquant.cli.group import FIGURE_DIR, write_group_outputs
from bids_agquant.lesions import lesion_geometry
from bids_agquant.qmri.uptake import percent_injected_dose_per_g

# NanoRad dose-group mean SE at D1 (seeds-facts §2.1, [000 L39]).
NANORAD_DOSES = [15.0, 30.0, 50.0, 75.0, 100.0]
NANORAD_SE = [26.3, 24.8, 56.7, 64.4, 120.5]


def _lesions(rows: list[dict]) -> pd.DataFrame:
    defaults = {"timepoint": "ses-D1", "t1_method": "vfa", "measurable": True,
                "hours_post_injection": 2.0, "longest_diameter_mm": 15.0}
    return pd.DataFrame([{**defaults, **r} for r in rows])


def _participants(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["participant_id", "agent", "dose_mg_per_kg", "weight_kg",
                                       "primary_tumor"])


# --------------------------------------------------------------------------- OLS / LAR


def test_ols_reproduces_nanorad_dose_response_t9():
    fit = group.ols_fit(NANORAD_DOSES, NANORAD_SE)
    assert fit["slope"] == pytest.approx(1.0809, abs=5e-5)
    assert round(fit["slope"], 2) == 1.08
    assert fit["intercept"] == pytest.approx(0.17, abs=5e-3)
    assert fit["r_squared"] == pytest.approx(0.9011, abs=5e-5)
    assert round(fit["r_squared"], 2) == 0.90
    assert fit["n"] == 5


def test_ols_drops_non_finite_pairs_and_rejects_degenerate_input():
    fit = group.ols_fit([1, 2, np.nan, 3, 4], [3, 5, 100, np.inf, 9])
    assert fit["n"] == 3
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0)
    assert fit["r_squared"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        group.ols_fit([1.0], [2.0])
    with pytest.raises(ValueError, match="no spread"):
        group.ols_fit([2, 2, 2], [1, 2, 3])
    assert np.isnan(group.ols_fit([1, 2, 3], [5, 5, 5])["r_squared"])  # constant y


def test_lar_ignores_an_outlier_that_ols_follows():
    x = np.arange(10.0)
    y = 0.5 * x - 2.0
    y[7] += 40.0  # one gross outlier
    lar = group.lar_fit(x, y)
    ols = group.ols_fit(x, y)
    assert lar["slope"] == pytest.approx(0.5, abs=1e-9)
    assert lar["intercept"] == pytest.approx(-2.0, abs=1e-9)
    assert lar["sum_abs_residuals"] == pytest.approx(40.0, abs=1e-8)
    assert abs(ols["slope"] - 0.5) > 0.5  # OLS is pulled towards the outlier
    # R² of the LAR line is the OLS formula applied to the LAR residuals.
    resid = y - (0.5 * x - 2.0)
    expected = 1 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2)
    assert lar["r_squared"] == pytest.approx(expected, abs=1e-9)
    assert lar["r_squared"] <= ols["r_squared"]


def test_lar_is_the_l1_optimum_on_noisy_data():
    rng = np.random.default_rng(3)
    x = rng.uniform(5, 40, 60)
    y = 1.3 * x + 4 + rng.laplace(0, 5, 60)
    lar = group.lar_fit(x, y)

    def l1(slope, intercept):
        return np.sum(np.abs(y - slope * x - intercept))

    best = l1(lar["slope"], lar["intercept"])
    assert best == pytest.approx(lar["sum_abs_residuals"])
    ols = group.ols_fit(x, y)
    assert best <= l1(ols["slope"], ols["intercept"]) + 1e-9
    for ds, di in [(1e-3, 0), (-1e-3, 0), (0, 1e-2), (0, -1e-2), (1e-3, -3e-2)]:
        assert best <= l1(lar["slope"] + ds, lar["intercept"] + di) + 1e-9


# --------------------------------------------------------------------------- small helpers


def test_percent_injected_dose_t1_through_the_summary():
    assert float(percent_injected_dose_per_g(60.0, 100.0, 60.0)) == pytest.approx(0.001)
    lesions = _lesions([{"participant_id": "sub-01", "lesion_id": i, "gd_mM_mean": m / 1000,
                         "mass_mg_per_L_mean": m} for i, m in ((1, 50.0), (2, 70.0))])
    parts = _participants([("sub-01", "AGuIX", 100.0, 60.0, "NSCLC")])
    summary = group.participant_summary(lesions, parts)
    assert summary["mass_mg_per_L_mean_of_lesion_means"].iloc[0] == pytest.approx(60.0)
    assert summary["percent_injected_dose_per_g_mean_of_lesions"].iloc[0] == pytest.approx(0.001)


def test_equivalent_diameter_t11_matches_lesion_geometry():
    d = group.equivalent_diameter_mm([0.5236, 4.189, 1.0])
    np.testing.assert_allclose(d, [10.0, 20.0, 12.41], atol=5e-3)
    labels = np.zeros((12, 12, 12), dtype=int)
    labels[2:9, 2:7, 3:11] = 1  # 280 voxels of 2 x 1 x 1.5 mm
    geometry = lesion_geometry(labels, np.diag([2.0, 1.0, 1.5, 1.0]))
    assert group.equivalent_diameter_mm(geometry["volume_ml"])[0] == pytest.approx(
        geometry["equiv_diameter_mm"].iloc[0])


def test_dose_normalisation_factors_t12():
    factors = group.dose_normalisation_factor([15, 30, 50, 75, 100, 0])
    np.testing.assert_allclose(factors[:5], [6.667, 3.333, 2.0, 1.333, 1.0], atol=5e-4)
    assert np.isnan(factors[5])  # placebo
    assert group.dose_normalisation_factor(50, 75.0) == pytest.approx(1.5)


def test_persistence_and_upper_limit_t13_t14():
    ratios = group.persistence_ratio([32.4, 14.0, 26.3], [175.8, 58.3, 154.1])
    np.testing.assert_allclose(np.round(ratios, 2), [0.18, 0.24, 0.17])
    assert np.isnan(group.persistence_ratio([1.0, 1.0], [0.0, -2.0])).all()
    limits = group.concentration_from_se([32.4, 14.0, 26.3], 1.0) / np.array([3.31, 1.69, 3.95])
    np.testing.assert_allclose(np.round(limits, 1), [9.8, 8.3, 6.7])
    for se, slope, expected in ((32.4, 3.31, 9.8), (14.0, 1.69, 8.3), (26.3, 3.95, 6.7)):
        assert round(float(group.concentration_from_se(se, slope)), 1) == expected
    assert max(np.round(limits)) <= 10  # NanoRad: "upper limit of 10 µM"
    assert np.isnan(group.concentration_from_se(10.0, 0.0))


def test_size_class_edges_are_left_closed():
    classes = group.size_class([5, 10, 19.99, 20, 49.9, 50, np.nan])
    assert list(classes) == ["other", "10-20 mm", "10-20 mm", "20-50 mm", "20-50 mm", "other",
                             "unknown"]
    assert list(group.size_class([7, 12], (5, 10))) == ["5-10 mm", "other"]
    with pytest.raises(ValueError):
        group.size_class([1], (20, 10))


def test_kmeans_two_separates_clusters_deterministically():
    rng = np.random.default_rng(0)
    low = rng.normal([0, 0], 0.1, (5, 2))
    high = rng.normal([4, 3], 0.1, (7, 2))
    x = np.vstack([high[:3], low, high[3:]])
    a = group.kmeans_two(x)
    b = group.kmeans_two(x)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["converged"]
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(a["labels"], truth)  # start: lowest first feature → cluster 0
    np.testing.assert_allclose(a["centres"][0], low.mean(axis=0))
    np.testing.assert_allclose(a["distances"][:, 0], np.linalg.norm(x - low.mean(axis=0), axis=1))
    with pytest.raises(ValueError, match="identical"):
        group.kmeans_two(np.ones((4, 2)))
    with pytest.raises(ValueError):
        group.kmeans_two([[1.0, 2.0]])


# --------------------------------------------------------------------------- table analyses


def _dose_table():
    """Per dose: participants with unequal lesion counts; lesion means equal the NanoRad SEs."""
    rows, parts = [], []
    for k, (dose, se) in enumerate(zip(NANORAD_DOSES, NANORAD_SE, strict=True)):
        # Patient A: 3 lesions se-6, se, se+6 (mean se); patient B: 1 lesion at se+12;
        # patient C: 2 lesions at se-6 each → pooled lesion mean = se.
        spec = {"A": [se - 6, se, se + 6], "B": [se + 12], "C": [se - 6, se - 6]}
        for name, values in spec.items():
            pid = f"sub-{k}{name}"
            parts.append((pid, "AGuIX", dose, 70.0, "NSCLC"))
            for i, v in enumerate(values, start=1):
                rows.append({"participant_id": pid, "lesion_id": i, "se_percent_mean": v})
                # A later timepoint that must not be picked by the "early" rule.
                rows.append({"participant_id": pid, "lesion_id": i, "se_percent_mean": v / 5,
                             "timepoint": "ses-D8", "hours_post_injection": 170.0})
    parts.append(("sub-P", "placebo", 0.0, 70.0, "breast"))
    rows += [{"participant_id": "sub-P", "lesion_id": 1, "se_percent_mean": 500.0}]
    return _lesions(rows), _participants(parts)


def test_dose_response_is_lesion_weighted_and_reproduces_t9():
    lesions, parts = _dose_table()
    result = group.dose_response(lesions, parts)
    assert result["status"] == "ok"
    assert [g["dose_mg_per_kg"] for g in result["groups"]] == NANORAD_DOSES  # placebo excluded
    np.testing.assert_allclose([g["mean"] for g in result["groups"]], NANORAD_SE)
    assert all(g["n_lesions"] == 6 and g["n_participants"] == 3 for g in result["groups"])
    # Patient-weighted: mean of (se, se+12, se-6) = se + 2.
    np.testing.assert_allclose([g["mean_patient_weighted"] for g in result["groups"]],
                               np.array(NANORAD_SE) + 2)
    assert result["fit"]["slope"] == pytest.approx(1.0809, abs=5e-5)
    assert result["fit"]["r_squared"] == pytest.approx(0.9011, abs=5e-5)
    assert result["fit_patient_weighted"]["slope"] == pytest.approx(1.0809, abs=5e-5)
    assert result["fit_patient_weighted"]["intercept"] == pytest.approx(2.17, abs=5e-3)
    assert result["selection"]["timepoints_used"] == {"ses-D1": 31}  # D1 only, placebo in
    assert result["n_lesions"] == 30 and result["n_participants"] == 15  # placebo out


def test_dose_response_skips_with_reasons():
    lesions, parts = _dose_table()
    no_se = group.dose_response(lesions.drop(columns="se_percent_mean"), parts)
    assert no_se["status"] == "skipped" and "se_percent_mean" in no_se["reason"]
    no_parts = group.dose_response(lesions, None)
    assert no_parts["status"] == "skipped" and "dose_mg_per_kg" in no_parts["reason"]
    one_dose = parts.assign(dose_mg_per_kg=np.where(parts["agent"] == "placebo", 0.0, 50.0))
    single = group.dose_response(lesions, one_dose)
    assert single["status"] == "skipped" and "need at least 2" in single["reason"]


def test_analysis_rows_timepoint_and_method_choice():
    rows = [
        # sub-01: D1 (2 h) with both methods, D8; a Dotarem reference scan 15 min post-injection.
        {"participant_id": "sub-01", "lesion_id": 1, "t1_method": "mp2rage"},
        {"participant_id": "sub-01", "lesion_id": 1, "t1_method": "vfa"},
        {"participant_id": "sub-01", "lesion_id": 1, "timepoint": "ses-D8",
         "hours_post_injection": 170.0},
        {"participant_id": "sub-01", "lesion_id": 1, "timepoint": "ses-D0_ce-gadoterate",
         "hours_post_injection": 0.25},
        # sub-02: same-session design, MP2RAGE only.
        {"participant_id": "sub-02", "lesion_id": 1, "timepoint": "ses-D0_ce-AGuIX",
         "t1_method": "mp2rage"},
        # sub-03: no injection times: natural label order (D2 before D10).
        {"participant_id": "sub-03", "lesion_id": 1, "timepoint": "ses-D10",
         "hours_post_injection": np.nan},
        {"participant_id": "sub-03", "lesion_id": 1, "timepoint": "ses-D2",
         "hours_post_injection": np.nan},
    ]
    parts = _participants([("sub-01", "AGuIX", 100, 70, "NSCLC"),
                           ("sub-02", "AGuIX", 100, 70, "NSCLC"),
                           ("sub-03", "AGuIX", 100, 70, "NSCLC")])
    got, sel = group.analysis_rows(_lesions(rows), parts)
    picked = {r.participant_id: (r.timepoint, r.t1_method) for r in got.itertuples()}
    assert picked == {"sub-01": ("ses-D1", "vfa"), "sub-02": ("ses-D0_ce-AGuIX", "mp2rage"),
                      "sub-03": ("ses-D2", "vfa")}
    assert sel["n_participants"] == 3 and sel["n_lesions"] == 3
    late, _ = group.analysis_rows(_lesions(rows), parts, timepoint="late")
    assert set(late["timepoint"]) == {"ses-D8", "ses-D0_ce-AGuIX", "ses-D10"}
    mp2, _ = group.analysis_rows(_lesions(rows), parts, timepoint="ses-D1", t1_method="mp2rage")
    assert list(mp2["t1_method"]) == ["mp2rage"]


def test_se_vs_concentration_per_participant_recovers_nanorad_slopes():
    rows = []
    conc = np.array([10.0, 25.0, 40.0, 60.0])
    for pid, slope, intercept in (("sub-13", 3.31, 5.0), ("sub-14", 1.69, -2.0),
                                  ("sub-15", 3.95, 0.0)):
        rows += [{"participant_id": pid, "lesion_id": i, "mass_mg_per_L_mean": c,
                  "se_percent_mean": slope * c + intercept} for i, c in enumerate(conc, 1)]
    rows += [{"participant_id": "sub-16", "lesion_id": i, "mass_mg_per_L_mean": c,
              "se_percent_mean": c} for i, c in enumerate(conc[:2], 1)]
    rows += [{"participant_id": "sub-13", "lesion_id": 9, "mass_mg_per_L_mean": 500.0,
              "se_percent_mean": 0.0, "measurable": False}]  # dropped: not measurable
    parts = _participants([(p, "AGuIX", 100, 70, "NSCLC")
                           for p in ("sub-13", "sub-14", "sub-15", "sub-16")])
    result = group.se_vs_concentration_per_participant(_lesions(rows), parts)
    slopes = {f["participant_id"]: (f["slope"], f["intercept"], f["n"]) for f in result["fits"]}
    assert slopes.keys() == {"sub-13", "sub-14", "sub-15"}
    for pid, (slope, intercept) in {"sub-13": (3.31, 5.0), "sub-14": (1.69, -2.0),
                                    "sub-15": (3.95, 0.0)}.items():
        assert slopes[pid][0] == pytest.approx(slope) and slopes[pid][1] == pytest.approx(
            intercept, abs=1e-9)
        assert slopes[pid][2] == 4
    assert [s["participant_id"] for s in result["skipped_participants"]] == ["sub-16"]
    assert result["parameters"]["concentration_units"] == "mg/L"
    missing = group.se_vs_concentration_per_participant(
        _lesions(rows).drop(columns="se_percent_mean"), parts)
    assert missing["status"] == "skipped"


def test_size_vs_uptake_lar_fits_treated_and_placebo_separately():
    d = np.array([6.0, 10, 14, 18, 22, 26, 30, 34])
    uptake = 2.0 * d + 5.0
    uptake[5] = 300.0  # genuine high-uptake tumour (outlier)
    rows = [{"participant_id": f"sub-0{i % 3}", "lesion_id": i, "equiv_diameter_mm": di,
             "mass_mg_per_L_mean": u, "measurable": di >= 10}
            for i, (di, u) in enumerate(zip(d, uptake, strict=True))]
    rows += [{"participant_id": "sub-09", "lesion_id": i, "equiv_diameter_mm": di,
              "mass_mg_per_L_mean": (-1) ** i * 2.0} for i, di in enumerate(d[:4])]
    parts = _participants([("sub-00", "AGuIX", 100, 70, "x"), ("sub-01", "AGuIX", 100, 70, "x"),
                           ("sub-02", "AGuIX", 100, 70, "x"), ("sub-09", "saline", 0, 70, "x")])
    result = group.size_vs_uptake_lar(_lesions(rows), parts)
    treated = result["treated"]
    assert treated["lar"]["slope"] == pytest.approx(2.0, abs=1e-9)
    assert treated["lar"]["intercept"] == pytest.approx(5.0, abs=1e-8)
    assert treated["lar"]["n"] == 8  # all tumours, not only measurable ones (NanoBrainMets)
    assert treated["ols"]["slope"] != pytest.approx(2.0, abs=0.1)
    assert treated["n_participants"] == 3
    assert result["placebo"]["status"] == "ok" and result["placebo"]["lar"]["n"] == 4
    assert abs(result["placebo"]["lar"]["slope"]) < 0.5


def _blinded_table(with_entropy: bool = True):
    """7 AGuIX and 3 placebo participants; placebo means at the NanoBrainMets extremes.

    Uptake in mM Gd, which equals mg/ml in the 1 g/L convention: placebo −0.0047 to 0.0097
    (T15), AGuIX patients 0.04 to 0.09 (one dose: k = 2 separates arms, not dose levels).
    """
    means = {"sub-01": 0.09, "sub-02": 0.08, "sub-03": 0.07, "sub-04": 0.06, "sub-05": 0.055,
             "sub-06": 0.05, "sub-07": 0.04, "sub-08": 0.0097, "sub-09": 0.0021,
             "sub-10": -0.0047}
    rows = []
    for pid, m in means.items():
        placebo = m < 0.01
        for i, offset in enumerate((-0.004, 0.0, 0.004), start=1):
            row = {"participant_id": pid, "lesion_id": i, "gd_mM_mean": m + offset}
            if with_entropy:
                row["gd_entropy_bits"] = (1.2 if placebo else 2.5 + 8 * m) + offset * 10
            rows.append(row)
    parts = _participants([(p, "placebo" if m < 0.01 else "AGuIX", 0.0 if m < 0.01 else 100.0,
                            70.0, "NSCLC") for p, m in means.items()])
    return _lesions(rows), parts


def test_classify_placebo_labels_the_placebo_participants_t15():
    lesions, parts = _blinded_table()
    result = group.classify_placebo(lesions, parts)
    assert result["status"] == "ok" and result["inference"] is True
    assert "not a measurement" in result["caveat"]
    assert result["features_used"] == ["uptake", "entropy"]
    labels = {e["participant_id"]: e["label"] for e in result["participants"]}
    assert {p for p, lab in labels.items() if lab == "suspected placebo"} == {
        "sub-08", "sub-09", "sub-10"}
    placebo_uptake = [e["uptake_mean_of_lesions"] for e in result["participants"]
                      if e["label"] == "suspected placebo"]
    assert -0.005 <= min(placebo_uptake) and max(placebo_uptake) <= 0.01
    for e in result["participants"]:
        closer_to_placebo = e["distance_to_placebo_centre"] < e["distance_to_agent_centre"]
        assert closer_to_placebo == (e["label"] == "suspected placebo")
    assert result["agreement"]["fraction_agree"] == 1.0
    assert result["agreement"]["confusion"]["placebo -> suspected placebo"] == 3


def test_classify_placebo_never_uses_the_true_arm():
    lesions, parts = _blinded_table()
    swapped = parts.assign(agent="placebo", dose_mg_per_kg=0.0)
    a = group.classify_placebo(lesions, parts)
    b = group.classify_placebo(lesions, swapped)
    assert [e["label"] for e in a["participants"]] == [e["label"] for e in b["participants"]]
    assert b["agreement"]["fraction_agree"] == pytest.approx(0.3)
    blind = group.classify_placebo(lesions, None)
    assert [e["label"] for e in blind["participants"]] == [e["label"] for e in a["participants"]]
    assert blind["agreement"]["status"] == "skipped"


def test_classify_placebo_falls_back_to_uptake_and_skips_small_samples():
    lesions, parts = _blinded_table(with_entropy=False)
    result = group.classify_placebo(lesions, parts)
    assert result["features_used"] == ["uptake"]
    assert "uptake alone" in result["feature_note"]
    assert result["agreement"]["fraction_agree"] == 1.0
    one = group.classify_placebo(lesions[lesions["participant_id"] == "sub-01"], parts)
    assert one["status"] == "skipped" and "need at least 2" in one["reason"]
    assert one["inference"] is True


def test_dose_normalised_se_by_tumour_and_size_class():
    rows = [
        # sub-a, 50 mg/kg (×2), NSCLC; sub-b, 100 mg/kg (×1), melanoma; sub-c placebo.
        {"participant_id": "sub-a", "lesion_id": 1, "se_percent_mean": 30.0,
         "longest_diameter_mm": 10.0},
        {"participant_id": "sub-a", "lesion_id": 2, "se_percent_mean": 60.0,
         "longest_diameter_mm": 20.0},
        {"participant_id": "sub-a", "lesion_id": 3, "se_percent_mean": 999.0,
         "longest_diameter_mm": 8.0, "measurable": False},
        {"participant_id": "sub-b", "lesion_id": 1, "se_percent_mean": 100.0,
         "longest_diameter_mm": 19.0},
        {"participant_id": "sub-b", "lesion_id": 2, "se_percent_mean": 140.0,
         "longest_diameter_mm": 60.0},
        {"participant_id": "sub-c", "lesion_id": 1, "se_percent_mean": 3.0,
         "longest_diameter_mm": 30.0},
    ]
    parts = _participants([("sub-a", "AGuIX", 50.0, 60, "NSCLC"),
                           ("sub-b", "AGuIX", 100.0, 60, "melanoma"),
                           ("sub-c", "placebo", 0.0, 60, "NSCLC")])
    result = group.dose_normalised_se(_lesions(rows), parts)
    by_tumour = {g["group"]: g for g in result["by_primary_tumor"]["groups"]}
    assert by_tumour["NSCLC"]["mean"] == pytest.approx(90.0)  # (60 + 120) / 2, placebo out
    assert by_tumour["NSCLC"]["sd"] == pytest.approx(np.std([60, 120], ddof=1))
    assert by_tumour["melanoma"]["mean"] == pytest.approx(120.0)
    by_size = {g["group"]: (g["mean"], g["n"]) for g in result["by_size_class"]["groups"]}
    assert by_size == {"10-20 mm": (pytest.approx(80.0), 2), "20-50 mm": (120.0, 1),
                       "other": (140.0, 1)}
    assert result["all"]["n"] == 4 and result["all"]["n_participants"] == 2
    ref75 = group.dose_normalised_se(_lesions(rows), parts, reference_dose_mg_per_kg=75.0)
    assert ref75["all"]["mean"] == pytest.approx(result["all"]["mean"] * 0.75)
    no_tumour = group.dose_normalised_se(_lesions(rows), parts.drop(columns="primary_tumor"))
    assert no_tumour["by_primary_tumor"]["status"] == "skipped"
    assert no_tumour["by_size_class"]["status"] == "ok"


def test_persistence_ratios_per_participant_t13_with_upper_limit_t14():
    rows = []
    for pid, d1, d8 in (("sub-13", 175.8, 32.4), ("sub-14", 58.3, 14.0),
                        ("sub-15", 154.1, 26.3)):
        for i, offset in enumerate((-10.0, 10.0), start=1):  # lesion means average to d1/d8
            rows.append({"participant_id": pid, "lesion_id": i, "se_percent_mean": d1 + offset,
                         "gd_mM_mean": 0.05})
            rows.append({"participant_id": pid, "lesion_id": i, "timepoint": "ses-D8",
                         "hours_post_injection": 170.0, "se_percent_mean": d8 + offset / 10,
                         "gd_mM_mean": 0.001, "gd_below_loq": True})
    result = group.persistence_ratios(
        _lesions(rows), se_concentration_slopes={"sub-13": 3.31, "sub-14": 1.69, "sub-15": 3.95})
    entries = {e["participant_id"]: e for e in result["se"]["participants"]}
    assert {p: round(e["ratio_of_means"], 2) for p, e in entries.items()} == {
        "sub-13": 0.18, "sub-14": 0.24, "sub-15": 0.17}
    assert {p: round(e["late_concentration_upper_limit"], 1) for p, e in entries.items()} == {
        "sub-13": 9.8, "sub-14": 8.3, "sub-15": 6.7}
    assert result["concentration"]["lesion_ratio"]["mean"] == pytest.approx(0.02)
    assert result["n_late_lesions_below_loq"] == 6 and result["n_lesions_paired"] == 6
    parts = _participants([("sub-13", "AGuIX", 100, 70, "NSCLC"),
                           ("sub-14", "placebo", 0, 70, "NSCLC"),
                           ("sub-15", "AGuIX", 100, 70, "breast")])
    treated = group.persistence_ratios(_lesions(rows), parts)
    assert [e["participant_id"] for e in treated["se"]["participants"]] == ["sub-13", "sub-15"]
    everyone = group.persistence_ratios(_lesions(rows), parts, treated_only=False)
    assert everyone["n_lesions_paired"] == 6
    absent = group.persistence_ratios(_lesions(rows), late="ses-D28")
    assert absent["status"] == "skipped" and "ses-D28" in absent["reason"]


def test_participant_summary_columns_and_values_t10():
    rows = []
    for pid, lesion_means in (("sub-13", [50.0, 65.0]), ("sub-14", [20.3]),
                              ("sub-15", [20.0, 29.5, 39.0])):  # NanoRad patient means
        for i, m in enumerate(lesion_means, start=1):
            rows.append({"participant_id": pid, "lesion_id": i, "gd_mM_mean": m / 1000,
                         "gd_mM_p75": m / 800, "mass_mg_per_L_mean": m,
                         "mass_mg_per_L_p75": m * 1.25, "gd_below_loq": False,
                         "measurable": i != 2})
    parts = _participants([("sub-13", "AGuIX", 100, 80, "NSCLC"),
                           ("sub-14", "AGuIX", 100, 60, "NSCLC"),
                           ("sub-15", "AGuIX", 100, 70, "breast")])
    summary = group.participant_summary(_lesions(rows), parts).set_index("participant_id")
    means = summary["mass_mg_per_L_mean_of_lesion_means"]
    np.testing.assert_allclose(means, [57.5, 20.3, 29.5])
    assert round(means.mean(), 1) == 35.8  # "prior 0.036 mg/ml" of NanoBrainMets
    np.testing.assert_allclose(summary["mass_mg_per_L_mean_of_lesion_p75"], means * 1.25)
    assert list(summary["n_lesions"]) == [2, 1, 3]
    assert list(summary["n_measurable"]) == [1, 1, 2]
    assert summary.loc["sub-15", "gd_mM_mean_of_measurable_lesion_means"] == pytest.approx(
        0.0295)
    assert summary.loc["sub-13", "primary_tumor"] == "NSCLC"
    assert summary.loc["sub-14", "percent_injected_dose_per_g_mean_of_lesions"] == pytest.approx(
        100 * 20.3e-3 / (100 * 60))
    assert "se_percent_mean_of_lesion_means" not in summary  # absent columns are left out


def test_run_group_analyses_degrades_without_optional_columns():
    lesions = _lesions([{"participant_id": f"sub-{i}", "lesion_id": 1, "gd_mM_mean": 0.01 * i,
                         "equiv_diameter_mm": 10.0 + i} for i in range(4)])
    stats = group.run_group_analyses(lesions, None)
    assert set(stats["skipped"]) >= {"dose_response", "se_vs_concentration_per_participant",
                                     "dose_normalised_se", "persistence"}
    assert all(reason for reason in stats["skipped"].values())
    assert "se_percent_mean" in stats["inputs"]["optional_columns_missing"]
    km = stats["analyses"]["inference_suspected_placebo_kmeans"]
    assert km["status"] == "ok" and km["inference"] is True
    empty = group.run_group_analyses(group.combine_lesion_tables({}), None)
    assert set(empty["skipped"]) == set(empty["analyses"])


# --------------------------------------------------------------------------- CLI outputs


def _write_outputs(root, n=6):
    """App-like output folder: D1 and D8 VFA tables (sub-02 also MP2RAGE) + participants.tsv."""
    rng = np.random.default_rng(7)
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    doses = [15.0, 50.0, 100.0, 100.0, 30.0, 0.0][:n]
    parts = []
    for k, dose in enumerate(doses, start=1):
        pid = f"sub-{k:02d}"
        parts.append((pid, "placebo" if dose == 0 else "AGuIX", dose, 70.0,
                      ["NSCLC", "breast", "melanoma"][k % 3]))
        n_les = 3 + k % 3
        d = rng.uniform(8, 35, n_les)
        for tp, hours, frac in (("ses-D1", 2.0, 1.0), ("ses-D8", 168.0, 0.2)):
            for method in ("vfa", "mp2rage") if k == 2 else ("vfa",):
                mass = frac * dose / 100 * (20 + 1.5 * d) + rng.normal(0, 1, n_les)
                table = pd.DataFrame({
                    "lesion_id": np.arange(1, n_les + 1), "timepoint": tp, "t1_method": method,
                    "volume_ml": np.pi / 6 * d**3 / 1000, "equiv_diameter_mm": d,
                    "longest_diameter_mm": d * 1.2, "measurable": d * 1.2 >= 10,
                    "gd_mM_mean": mass / 1000, "gd_mM_p75": mass / 800,
                    "mass_mg_per_L_mean": mass, "se_percent_mean": 2 * mass + rng.normal(0, 2),
                    "gd_entropy_bits": 1.5 + 0.02 * mass, "hours_post_injection": hours})
                anat = out / pid / tp / "anat"
                anat.mkdir(parents=True, exist_ok=True)
                table.to_csv(anat / f"{pid}_{tp}_desc-{method}_lesions.tsv", sep="\t",
                             index=False, na_rep="n/a", float_format="%.6g")
    _participants(parts).to_csv(bids / "participants.tsv", sep="\t", index=False)
    return bids, out


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.glob("group_*.*"))
            + sorted((out / FIGURE_DIR).glob("*"))}


def test_write_group_outputs_files_json_figures_idempotent(tmp_path):
    bids, out = _write_outputs(tmp_path)
    written = write_group_outputs(out, bids)
    names = {p.name for p in written}
    assert {"group_lesions.tsv", "group_participants.tsv", "group_stats.json"} <= names
    stats = json.loads((out / "group_stats.json").read_text())
    assert stats["skipped"] == {}
    assert stats["analyses"]["inference_suspected_placebo_kmeans"]["inference"] is True
    assert stats["parameters"]["reference_dose_mg_per_kg"] == 100.0
    figures = sorted((out / FIGURE_DIR).glob("*.svg"))
    assert len(figures) == 6 and sorted(stats["figures"]) == [
        f"{FIGURE_DIR}/{f.name}" for f in figures]
    for fig in figures:
        assert ET.parse(fig).getroot().tag.endswith("svg")
    lesions = pd.read_csv(out / "group_lesions.tsv", sep="\t")
    assert len(lesions) == sum(2 * (3 + k % 3) * (2 if k == 2 else 1) for k in range(1, 7))
    summary = pd.read_csv(out / "group_participants.tsv", sep="\t")
    assert set(summary["participant_id"]) == {f"sub-{k:02d}" for k in range(1, 7)}
    first = _snapshot(out)
    write_group_outputs(out, bids)
    assert _snapshot(out) == first  # byte-identical rerun
    assert not list(out.rglob("*.tmp"))


def test_write_group_outputs_labels_reference_dose_and_stale_figures(tmp_path):
    bids, out = _write_outputs(tmp_path)
    write_group_outputs(out, bids, participant_label=["01", "02"],
                        reference_dose_mg_per_kg=50.0)
    stats = json.loads((out / "group_stats.json").read_text())
    assert stats["inputs"]["n_participants_with_tables"] == 2
    assert stats["analyses"]["dose_normalised_se"]["parameters"][
        "reference_dose_mg_per_kg"] == 50.0
    # Without SE columns the SE analyses are skipped and their old figures removed.
    for tsv in out.glob("sub-*/*/anat/*_lesions.tsv"):
        pd.read_csv(tsv, sep="\t").drop(columns="se_percent_mean").to_csv(
            tsv, sep="\t", index=False)
    (bids / "participants.tsv").unlink()
    write_group_outputs(out, bids)
    stats = json.loads((out / "group_stats.json").read_text())
    assert {"dose_response", "dose_normalised_se"} <= set(stats["skipped"])
    assert not (out / FIGURE_DIR / "dose_response.svg").exists()
    assert (out / FIGURE_DIR / "inference_suspected_placebo_kmeans.svg").exists()


def test_combine_derives_below_loq_from_the_quantification_column():
    from bids_agquant.group import combine_lesion_tables

    table = pd.DataFrame({"timepoint": ["ses-D8"] * 2, "lesion_id": [1, 2],
                          "quantification": ["<LoQ", "quantified"]})
    combined = combine_lesion_tables({"sub-01": table})
    assert combined["gd_below_loq"].tolist() == [True, False]
