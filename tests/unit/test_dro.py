"""The digital reference object (bids_agquant.dro): layout, truth, physics, validity.

Most tests share the session-scoped ``dro2mm`` fixture (tests/conftest.py: 3 participants,
2 mm).  Two extra one-participant datasets check determinism and the noise-free signal model.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from bids_agquant import dro as dro_mod
from bids_agquant.dro import DRO, make_dataset
from bids_agquant.qmri import mp2rage
from bids_agquant.validation import find_validator

SESSIONS = ("D0", "D1", "D8")
FLIPS = (2.0, 5.0, 10.0, 15.0)
#: Timepoint key -> BIDS label, per participant of the 3-participant fixture.
TIMEPOINTS = {
    "sub-01": {"D0": "ses-D0", "D1": "ses-D1", "D8": "ses-D8"},
    "sub-02": {"D0": "ses-D0", "D0_ce-AGuIX": "ses-D0_ce-AGuIX"},
    "sub-03": {"D0": "ses-D0", "D1": "ses-D1", "D8": "ses-D8"},
}
KINDS = {"sub-01": ("VFA", "MP2RAGE"), "sub-02": ("MP2RAGE",), "sub-03": ("VFA",)}
#: Post-agent timepoints 2 h after the agent.
TWO_HOURS = ("ses-D1", "ses-D0_ce-AGuIX")


def _load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _lesions(dro: DRO) -> pd.DataFrame:
    return pd.read_csv(dro.truth_dir / "lesions.tsv", sep="\t", na_values=["n/a"])


def _participants(dro: DRO) -> pd.DataFrame:
    return pd.read_csv(dro.bids_dir / "participants.tsv", sep="\t", na_values=["n/a"])


def _rotation_deg(matrix) -> float:
    r = np.asarray(matrix)[:3, :3]
    return math.degrees(math.acos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)))


def _sample(volume: np.ndarray, affine: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``volume`` at physical points (N, 3)."""
    ijk = nib.affines.apply_affine(np.linalg.inv(affine), points_mm)
    return ndi.map_coordinates(volume, ijk.T, order=1, mode="constant", cval=0.0)


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"resolution_mm": 3}, {"resolution_mm": 0},
                                    {"participants": 0}, {"snr": 0.0}])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "bids", **kwargs)
    assert not (tmp_path / "bids").exists()


def test_truth_inside_raw_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        make_dataset(tmp_path / "bids", truth_dir=tmp_path / "bids" / "truth")


def test_existing_non_empty_target_is_refused(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_dataset(tmp_path / "bids")


# --------------------------------------------------------------------------------------
# Layout and metadata
# --------------------------------------------------------------------------------------


def test_paths_and_top_level_files(dro2mm):
    assert dro2mm.contours_dir == dro2mm.bids_dir / "derivatives" / "contours"
    assert dro2mm.truth_dir == dro2mm.bids_dir.parent / "bids_truth"
    assert dro2mm.bids_dir not in dro2mm.truth_dir.parents
    desc = json.loads((dro2mm.bids_dir / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and len(desc["Authors"]) >= 2
    assert len((dro2mm.bids_dir / "README.md").read_text().split()) > 100
    cdesc = json.loads((dro2mm.contours_dir / "dataset_description.json").read_text())
    assert cdesc["DatasetType"] == "derivative"
    assert cdesc["GeneratedBy"][0]["Name"] == "bids-agquant-dro"
    for name in ("truth.json", "transforms.json", "lesions.tsv"):
        assert (dro2mm.truth_dir / name).is_file(), name


def test_participants_roles(dro2mm):
    parts = _participants(dro2mm)
    assert list(parts.columns) == ["participant_id", "agent", "dose_mg_per_kg", "weight_kg",
                                   "primary_tumor"]
    assert list(parts["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    assert list(parts["agent"]) == ["AGuIX", "AGuIX", "placebo"]
    assert list(parts["dose_mg_per_kg"]) == [100, 50, 0]
    assert parts["weight_kg"].between(55, 95).all()
    assert set(parts["primary_tumor"]) <= {"NSCLC", "melanoma", "breast", "colon"}
    meta = json.loads((dro2mm.bids_dir / "participants.json").read_text())
    assert meta["dose_mg_per_kg"]["Units"] == "mg/kg" and meta["weight_kg"]["Units"] == "kg"


def test_roles_for_other_participant_counts():
    roles = dro_mod._participant_roles
    one = roles(1)
    assert [(r.agent, r.dose_mg_per_kg, r.b1_units, r.methods) for r in one] == [
        ("AGuIX", 100.0, "fraction", ("vfa", "mp2rage"))]
    assert [r.agent for r in roles(2)] == ["AGuIX", "placebo"]
    assert [r.design for r in roles(2)] == ["sessions", "sessions"]
    six = roles(6)
    assert [r.dose_mg_per_kg for r in six] == [100.0, 50.0, 15.0, 30.0, 75.0, 0.0]
    # Extra participants carry the raw B1+ representations, one each, then TB1maps.
    assert [r.b1_format for r in six] == ["TB1map", "TB1map", "TB1TFL", "TB1AFI", "TB1DAM",
                                          None]
    assert [r.b1_units for r in six] == ["fraction", "percent", None, None, None, None]
    eight = roles(8)
    assert [r.b1_format for r in eight[2:7]] == ["TB1TFL", "TB1AFI", "TB1DAM", "TB1SRGE",
                                                 "TB1map"]
    assert [r.design for r in six].count("same-session") == 1 and six[1].design == "same-session"
    assert [r.methods for r in six[2:]] == [("vfa",)] * 4


def test_sessions_tables(dro2mm):
    for sub in ("sub-01", "sub-03"):
        table = pd.read_csv(dro2mm.bids_dir / sub / f"{sub}_sessions.tsv", sep="\t",
                            na_values=["n/a"])
        assert list(table["session_id"]) == ["ses-D0", "ses-D1", "ses-D8"]
        hours = table["hours_post_injection"]
        assert math.isnan(hours[0]) and hours[1] == 2.0 and 160 <= hours[2] <= 176
        times = pd.to_datetime(table["acq_time"], format="%Y-%m-%dT%H:%M:%S")
        assert times.is_monotonic_increasing
        assert (times[2] - times[1]).total_seconds() / 3600 == pytest.approx(hours[2] - 2.0)
    # Same-session design: one session; the per-image times are in scans.tsv.
    table = pd.read_csv(dro2mm.bids_dir / "sub-02" / "sub-02_sessions.tsv", sep="\t",
                        na_values=["n/a"])
    assert list(table["session_id"]) == ["ses-D0"] and table["hours_post_injection"].isna().all()
    scans = pd.read_csv(dro2mm.bids_dir / "sub-02" / "ses-D0" / "sub-02_ses-D0_scans.tsv",
                        sep="\t", na_values=["n/a"])
    post = scans["filename"].str.contains("_ce-AGuIX_")
    assert post.sum() == 6 and (~post).sum() == 6  # T1w, 4 MP2RAGE, UNIT1 each
    assert (scans.loc[post, "hours_post_injection"] == 2.0).all()
    assert scans.loc[~post, "hours_post_injection"].isna().all()
    for name in scans["filename"]:
        assert (dro2mm.bids_dir / "sub-02" / "ses-D0" / name).is_file(), name

def test_image_files_and_sidecars(dro2mm):
    bids = dro2mm.bids_dir
    top = json.loads((bids / "MP2RAGE.json").read_text())
    assert top["NumberShots"] == [44, 88] and top["RepetitionTimePreparation"] == 5.0
    assert top["RepetitionTimeExcitation"] == 0.0071 and top["MagneticFieldStrength"] == 3
    for sub, b1_units in (("sub-01", "fraction"), ("sub-02", "percent"), ("sub-03", None)):
        for key, label in TIMEPOINTS[sub].items():
            ses = label.split("_")[0]
            anat = bids / sub / ses / "anat"
            stem = f"{sub}_{label}"
            t1w = json.loads((anat / f"{stem}_T1w.json").read_text())
            assert t1w["FlipAngle"] == 20 and t1w["RepetitionTime"] == 0.010
            assert t1w["EchoTime"] == 0.0025 and t1w["MagneticFieldStrength"] == 3
            assert (anat / f"{stem}_T1w.nii.gz").is_file()
            for n, fa in enumerate(FLIPS, start=1):
                vfa = anat / f"{stem}_flip-{n}_VFA.nii.gz"
                assert vfa.is_file() == ("VFA" in KINDS[sub])
                if not vfa.is_file():
                    continue
                side = json.loads((anat / f"{stem}_flip-{n}_VFA.json").read_text())
                assert side["FlipAngle"] == fa
                assert side["RepetitionTimeExcitation"] == 0.015
                assert side["PulseSequenceType"] == "SPGR"
            has_mp2rage = "MP2RAGE" in KINDS[sub]
            assert (anat / f"{stem}_UNIT1.nii.gz").is_file() == has_mp2rage
            for n, (fa, ti) in enumerate(((4.0, 0.7), (5.0, 2.5)), start=1):
                for part in ("mag", "phase"):
                    image = anat / f"{stem}_inv-{n}_part-{part}_MP2RAGE.nii.gz"
                    assert image.is_file() == has_mp2rage
                    if has_mp2rage:
                        side = json.loads(Path(str(image).replace(".nii.gz", ".json"))
                                          .read_text())
                        assert side["FlipAngle"] == fa and side["InversionTime"] == ti
                        if part == "phase":
                            assert side["Units"] == ("rad" if sub == "sub-01" else "arbitrary")
            if key.startswith("D0_ce"):
                continue  # one B1+ map per session
            fmap = bids / sub / ses / "fmap" / f"{sub}_{ses}_TB1map.nii.gz"
            assert fmap.is_file() == (b1_units is not None)
            if b1_units:
                meta = json.loads(fmap.with_name(fmap.name.replace(".nii.gz", ".json"))
                                  .read_text())
                assert meta["Units"] == b1_units
                assert len(meta["IntendedFor"]) == {"sub-01": 9, "sub-02": 10}[sub]
                for uri in meta["IntendedFor"]:
                    assert (bids / uri.removeprefix("bids::")).is_file(), uri
        seg = (dro2mm.contours_dir / sub / "ses-D0" / "anat" / f"{sub}_ses-D0_desc-GTV_dseg")
        assert Path(f"{seg}.nii.gz").is_file()
        names = pd.read_csv(f"{seg}.tsv", sep="\t")
        assert list(names["index"]) == [1, 2, 3]
        assert list(names["name"]) == ["GTV1", "GTV2", "GTV3"]
        truth = dro2mm.truth_dir / sub
        assert (truth / f"{sub}_space-D0_desc-brain_mask.nii.gz").is_file()
        for label in TIMEPOINTS[sub].values():
            kinds = ["space-D0_Gdconc", "space-D0_T1map", "space-D0_R1map"]
            for kind in KINDS[sub]:
                kinds += [f"space-{kind}_B1map", f"space-{kind}_T1map", f"space-{kind}_M0map"]
            for kind in kinds:
                ses = label.split("_")[0]
                assert (truth / ses / f"{sub}_{label}_{kind}.nii.gz").is_file(), (label, kind)
    assert not list(bids.rglob("*truth*")), "truth leaked into the raw dataset"


# --------------------------------------------------------------------------------------
# Lesion truth
# --------------------------------------------------------------------------------------


def test_lesion_table_ranges(dro2mm):
    table = _lesions(dro2mm)
    assert len(table) == 3 * (3 + 2 + 3)
    for pid, rows in table.groupby("participant_id"):
        d1 = rows[rows["timepoint"].isin(TWO_HOURS)].set_index("lesion_id")
        assert sorted(d1.index) == [1, 2, 3]
        assert set(d1["pattern"]) == {"homogeneous", "rim", "central_max"}
        assert d1["equiv_diameter_mm"].between(6, 30).all(), pid
        assert (d1["longest_diameter_mm"] < 10).sum() >= 1, pid
        assert (d1["equiv_diameter_mm"] >= 16).sum() >= 2, pid
        assert (d1["measurable"] == (d1["longest_diameter_mm"] >= 10)).all()
        assert d1["t1_lesion_nominal_s"].between(1.3, 1.7).all()
        # volume / diameter bookkeeping from the contour
        eq = (6 * d1["volume_ml"] * 1000 / math.pi) ** (1 / 3)
        np.testing.assert_allclose(d1["equiv_diameter_mm"], eq, rtol=1e-4)
        np.testing.assert_allclose(d1["volume_ml"], d1["n_voxels"] * 0.008, rtol=1e-6)
        assert (d1["longest_diameter_mm"] >= 0.8 * d1["equiv_diameter_mm"]).all()
        d0 = rows[rows["timepoint"] == "ses-D0"].set_index("lesion_id")
        d8 = rows[rows["timepoint"] == "ses-D8"].set_index("lesion_id")
        assert (d0["gd_mM_mean"] == 0).all() and (d0["deltaR1_mean"] == 0).all()
        if pid == "sub-03":  # placebo
            assert (rows["gd_mM_mean"] == 0).all() and (rows["deltaR1_mean"] == 0).all()
            continue
        assert d1["gd_mM_mean"].between(0.03, 0.15).all(), pid
        np.testing.assert_allclose(d1["deltaR1_mean"], 8.9 * d1["gd_mM_mean"], rtol=1e-6)
        assert (d1["t1_s_mean"] < d1["t1_baseline_s_mean"]).all()
        if pid == "sub-02":  # same-session design: no D8
            assert d8.empty and (d1["hours_post_injection"] == 2.0).all()
            assert (d1["ceagent"] == "AGuIX").all() and (d1["session"] == "D0").all()
            continue
        ratio = d8["gd_mM_mean"] / d1["gd_mM_mean"]
        assert ratio.between(0.10 - 1e-6, 0.20 + 1e-6).all(), ratio
        assert (d8["t1_s_mean"] > d1["t1_s_mean"]).all()
    # dose response: sub-01 (100 mg/kg) takes up more than sub-02 (50 mg/kg)
    d1 = table[table["timepoint"].isin(TWO_HOURS)]
    assert (d1[d1.participant_id == "sub-01"]["gd_mM_mean"].min()
            > d1[d1.participant_id == "sub-02"]["gd_mM_mean"].max())


def test_lesions_inside_brain_and_apart(dro2mm):
    table = _lesions(dro2mm)
    for sub in ("sub-01", "sub-02", "sub-03"):
        seg_img = nib.load(dro2mm.contours_dir / sub / "ses-D0" / "anat"
                           / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz")
        seg = np.asarray(seg_img.dataobj)
        assert seg.dtype.kind in "ui" and set(np.unique(seg)) == {0, 1, 2, 3}
        mask = _load(dro2mm.truth_dir / sub / f"{sub}_space-D0_desc-brain_mask.nii.gz") > 0
        # fully inside the brain, with margin, and >= 5 mm apart (2.5 voxels of 2 mm)
        assert mask[ndi.binary_dilation(seg > 0, iterations=2)].all()
        for a in (1, 2, 3):
            grown = ndi.binary_dilation(seg == a, iterations=2)
            assert not np.isin(seg[grown], [b for b in (1, 2, 3) if b != a]).any()
        rows = table[(table.participant_id == sub) & (table.timepoint == "ses-D0")]
        for _, row in rows.iterrows():
            assert (seg == row["lesion_id"]).sum() == row["n_voxels"]
            centre = [row["center_x_mm"], row["center_y_mm"], row["center_z_mm"]]
            ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(seg_img.affine), centre))
            assert seg[tuple(ijk.astype(int))] == row["lesion_id"]


def test_gd_truth_matches_table_and_is_confined(dro2mm):
    table = _lesions(dro2mm)
    for sub in ("sub-01", "sub-02", "sub-03"):
        seg = _load(dro2mm.contours_dir / sub / "ses-D0" / "anat"
                    / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz")
        far = ~ndi.binary_dilation(seg > 0, iterations=5)  # > 10 mm from every GTV
        for ses, label in TIMEPOINTS[sub].items():
            folder = label.split("_")[0]
            stem = dro2mm.truth_dir / sub / folder / f"{sub}_{label}_space-D0"
            conc = _load(f"{stem}_Gdconc.nii.gz").astype(np.float64)
            t1 = _load(f"{stem}_T1map.nii.gz").astype(np.float64)
            r1 = _load(f"{stem}_R1map.nii.gz").astype(np.float64)
            assert np.all(conc[far] == 0), (sub, ses)  # no uptake in normal tissue
            assert conc.min() >= 0
            if sub == "sub-03" or ses == "D0":
                assert not conc.any()
            brain = r1 > 0
            np.testing.assert_allclose(t1[brain] * r1[brain], 1.0, rtol=1e-5)
            rows = table[(table.participant_id == sub) & (table.timepoint == label)]
            assert len(rows) == 3
            for _, row in rows.iterrows():
                inside = seg == row["lesion_id"]
                assert conc[inside].mean() == pytest.approx(row["gd_mM_mean"], rel=1e-4,
                                                            abs=1e-7)
                assert np.median(conc[inside]) == pytest.approx(row["gd_mM_median"],
                                                                rel=1e-4, abs=1e-7)
                assert t1[inside].mean() == pytest.approx(row["t1_s_mean"], rel=1e-4)


def test_concentration_patterns(dro2mm):
    """Rim lesions peak at the border, central_max at the centre, homogeneous is flat."""
    table = _lesions(dro2mm)
    sub = "sub-01"
    seg = _load(dro2mm.contours_dir / sub / "ses-D0" / "anat"
                / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz")
    conc = _load(dro2mm.truth_dir / sub / "ses-D1" / f"{sub}_ses-D1_space-D0_Gdconc.nii.gz")
    rows = table[(table.participant_id == sub) & (table.session == "D1")]
    for _, row in rows.iterrows():
        inside = seg == row["lesion_id"]
        core = ndi.binary_erosion(inside, iterations=1)
        shell = inside & ~core
        if core.sum() < 3:
            continue  # too small to tell core from shell at 2 mm
        core_mean, shell_mean = conc[core].mean(), conc[shell].mean()
        peak = row["gd_peak_mM"]
        if row["pattern"] == "central_max":
            assert conc[core].max() > conc[shell].max()
        elif row["pattern"] == "rim":
            assert np.percentile(conc[core], 10) < 0.6 * peak
        else:
            assert np.percentile(conc[core], 10) > 0.95 * peak
        assert core_mean > 0 and shell_mean > 0


# --------------------------------------------------------------------------------------
# Poses and images
# --------------------------------------------------------------------------------------


def test_motions(dro2mm):
    transforms = json.loads((dro2mm.truth_dir / "transforms.json").read_text())
    detail = json.loads((dro2mm.truth_dir / "truth.json").read_text())["participants_detail"]
    mask_img = nib.load(dro2mm.truth_dir / "sub-01" / "sub-01_space-D0_desc-brain_mask.nii.gz")
    brain = nib.affines.apply_affine(mask_img.affine,
                                     np.argwhere(np.asarray(mask_img.dataobj) > 0))
    assert set(transforms) == {"sub-01", "sub-02", "sub-03"}
    for sub, poses in transforms.items():
        assert set(poses) == set(TIMEPOINTS[sub])
        np.testing.assert_array_equal(poses["D0"]["T1w"], np.eye(4))
        for ses in TIMEPOINTS[sub]:
            assert set(poses[ses]) == {"T1w", *KINDS[sub]}
            for kind in poses[ses]:
                m = np.asarray(poses[ses][kind])
                np.testing.assert_allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-9)
                assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
                np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
            for kind in KINDS[sub]:
                rel = np.asarray(poses[ses][kind]) @ np.linalg.inv(poses[ses]["T1w"])
                assert 0.5 - 1e-6 <= _rotation_deg(rel) <= 1.5 + 1e-6, (sub, ses, kind)
            if ses == "D0":
                continue
            pose = np.asarray(poses[ses]["T1w"])
            assert 4.0 - 1e-6 <= _rotation_deg(pose) <= 8.0 + 1e-6, (sub, ses)
            motion = detail[sub]["motion"][ses]["T1w"]
            assert 4.0 <= np.linalg.norm(motion["translation_mm"]) <= 8.0
            pivot = np.asarray(motion["pivot_mm"])
            np.testing.assert_allclose(nib.affines.apply_affine(pose, pivot) - pivot,
                                       motion["translation_mm"], atol=1e-4)
            shift = np.linalg.norm(nib.affines.apply_affine(pose, brain) - brain, axis=1)
            assert shift.mean() >= 4.0, (sub, ses, shift.mean())


def test_same_grid_but_the_head_moved(dro2mm):
    from nilearn.datasets import load_mni152_template

    ref = load_mni152_template(resolution=2)
    sub = "sub-01"
    images = sorted(dro2mm.bids_dir.glob(f"{sub}/ses-*/*/*.nii.gz"))
    assert len(images) == 3 * 11  # T1w, 4 VFA, 4 MP2RAGE, UNIT1, TB1map per session
    for path in images:
        img = nib.load(path)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
    transforms = json.loads((dro2mm.truth_dir / "transforms.json").read_text())[sub]
    anat = dro2mm.bids_dir / sub
    d0_img = nib.load(anat / "ses-D0" / "anat" / f"{sub}_ses-D0_T1w.nii.gz")
    d0 = np.asarray(d0_img.dataobj, dtype=np.float64)
    seg = _load(dro2mm.contours_dir / sub / "ses-D0" / "anat"
                / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz")
    mask = _load(dro2mm.truth_dir / sub / f"{sub}_space-D0_desc-brain_mask.nii.gz") > 0
    roi = mask & ~ndi.binary_dilation(seg > 0, iterations=4)
    pts = nib.affines.apply_affine(d0_img.affine, np.argwhere(roi))
    for ses in ("D1", "D8"):
        moving = _load(anat / f"ses-{ses}" / "anat" / f"{sub}_ses-{ses}_T1w.nii.gz")
        pose = np.asarray(transforms[ses]["T1w"])
        as_is = np.corrcoef(d0[roi], moving[roi])[0, 1]
        aligned = np.corrcoef(d0[roi], _sample(moving, d0_img.affine,
                                               nib.affines.apply_affine(pose, pts)))[0, 1]
        wrong_way = np.corrcoef(d0[roi], _sample(
            moving, d0_img.affine, nib.affines.apply_affine(np.linalg.inv(pose), pts)))[0, 1]
        assert as_is < 0.9, (ses, as_is)  # the content differs: the head moved
        # fixed point x -> moving point P x (not P^-1 x); the residual mismatch is noise,
        # interpolation and the coil (receive) bias, which stays with the scanner
        assert aligned > 0.95, (ses, aligned)
        assert aligned > as_is + 0.3 and aligned > wrong_way + 0.3


@pytest.mark.parametrize(("sub", "kind"), [("sub-03", "VFA"), ("sub-02", "MP2RAGE")])
def test_native_truth_follows_the_acquisition_pose(dro2mm, sub, kind):
    transforms = json.loads((dro2mm.truth_dir / "transforms.json").read_text())[sub]
    mask_img = nib.load(dro2mm.truth_dir / sub / f"{sub}_space-D0_desc-brain_mask.nii.gz")
    affine = mask_img.affine
    for ses, label in TIMEPOINTS[sub].items():
        tdir = dro2mm.truth_dir / sub / label.split("_")[0]
        t1_d0 = _load(tdir / f"{sub}_{label}_space-D0_T1map.nii.gz")
        t1_vfa = _load(tdir / f"{sub}_{label}_space-{kind}_T1map.nii.gz")
        pose = np.asarray(transforms[ses][kind])
        inner = ndi.binary_erosion(t1_vfa > 0, iterations=3)
        ijk = np.argwhere(inner)
        scanner = nib.affines.apply_affine(affine, ijk)
        obj = nib.affines.apply_affine(np.linalg.inv(pose), scanner)
        err = np.abs(_sample(t1_d0, affine, obj) - t1_vfa[inner]) / t1_vfa[inner]
        err_id = np.abs(t1_d0[inner] - t1_vfa[inner]) / t1_vfa[inner]
        assert np.median(err) < 0.02, (ses, np.median(err))  # 2 mm interpolation error
        # D0: only the small intra-session motion; D1/D8: inter-session motion on top
        assert np.median(err) < (1.0 if ses == "D0" else 0.25) * np.median(err_id)


def test_b1_maps(dro2mm):
    percent = _load(dro2mm.bids_dir / "sub-02" / "ses-D0" / "fmap" / "sub-02_ses-D0_TB1map.nii.gz")
    percent_truth = _load(dro2mm.truth_dir / "sub-02" / "ses-D0"
                          / "sub-02_ses-D0_space-MP2RAGE_B1map.nii.gz")
    np.testing.assert_allclose(percent, 100 * percent_truth, rtol=1e-5)
    for ses in SESSIONS:
        truth = _load(dro2mm.truth_dir / "sub-01" / f"ses-{ses}"
                      / f"sub-01_ses-{ses}_space-VFA_B1map.nii.gz")
        frac = _load(dro2mm.bids_dir / "sub-01" / f"ses-{ses}" / "fmap"
                     / f"sub-01_ses-{ses}_TB1map.nii.gz")
        np.testing.assert_allclose(frac, truth, rtol=1e-6)
        brain = _load(dro2mm.truth_dir / "sub-01" / f"ses-{ses}"
                      / f"sub-01_ses-{ses}_space-VFA_M0map.nii.gz") > 0
        lo, hi = np.percentile(truth[brain], [1, 99])
        assert 0.75 <= lo <= 0.9 and 1.1 <= hi <= 1.25, (lo, hi)


def test_vfa_noise_statistics(dro2mm):
    """Residuals against the noise-free model have the recorded sigma (Rician at high SNR)."""
    meta = json.loads((dro2mm.truth_dir / "truth.json").read_text())
    assert meta["snr"] == 100.0
    sub, ses = "sub-01", "D1"
    sigma = meta["noise_sigma"][sub][ses]
    tdir = dro2mm.truth_dir / sub / f"ses-{ses}"
    m0 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_M0map.nii.gz").astype(np.float64)
    t1 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_T1map.nii.gz").astype(np.float64)
    b1 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_B1map.nii.gz").astype(np.float64)
    e1 = np.exp(-0.015 / np.where(t1 > 0, t1, 1.0))
    wm_means = []
    for n, fa in enumerate(FLIPS, start=1):
        img = _load(dro2mm.bids_dir / sub / f"ses-{ses}" / "anat"
                    / f"{sub}_ses-{ses}_flip-{n}_VFA.nii.gz").astype(np.float64)
        a = b1 * math.radians(fa)
        model = m0 * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a))
        bright = model > 20 * sigma
        resid = img[bright] - model[bright]
        assert abs(resid.mean()) < 0.05 * sigma
        assert resid.std() == pytest.approx(sigma, rel=0.05)
        background = m0 == 0
        assert img[background].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)
        wm_means.append(model[(t1 > 0.8) & (t1 < 0.86)].mean())
    # SNR definition: sigma = max WM mean / snr (WM here approximated by T1 ~ 0.83 s)
    assert max(wm_means) / sigma == pytest.approx(100.0, rel=0.05)


# --------------------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["raw", "contours"])
def test_bids_validator(dro2mm, which):
    exe = find_validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install '.[test]')")
    target = dro2mm.bids_dir if which == "raw" else dro2mm.contours_dir
    proc = subprocess.run([exe, "--no-color", "--ignoreWarnings", str(target)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


# --------------------------------------------------------------------------------------
# Determinism and the noise-free model
# --------------------------------------------------------------------------------------


def test_deterministic_for_a_seed(dro2mm, tmp_path):
    """Same seed -> sub-01 identical to the fixture's (participants are independent)."""
    one = make_dataset(tmp_path / "bids", participants=1, resolution_mm=2)
    files = list((dro2mm.bids_dir / "sub-01").rglob("*.nii.gz"))
    files += list((dro2mm.contours_dir / "sub-01").rglob("*.nii.gz"))
    files += list((dro2mm.truth_dir / "sub-01").rglob("*.nii.gz"))
    rel = [p.relative_to(dro2mm.bids_dir.parent) for p in files]
    # raw: 3 sessions x 11 images; contours: 1; truth: mask + 3 x (3 D0 + 3 VFA + 3 MP2RAGE)
    assert len(rel) == 3 * 11 + 1 + (1 + 3 * 9)
    for r in rel:
        np.testing.assert_array_equal(_load(one.bids_dir.parent / r),
                                      _load(dro2mm.bids_dir.parent / r), err_msg=str(r))
    a = _lesions(one)
    b = _lesions(dro2mm)
    pd.testing.assert_frame_equal(a, b[b.participant_id == "sub-01"].reset_index(drop=True),
                                  check_dtype=False)  # ceagent: all n/a in one of them
    ta = json.loads((one.truth_dir / "transforms.json").read_text())
    tb = json.loads((dro2mm.truth_dir / "transforms.json").read_text())
    assert ta["sub-01"] == tb["sub-01"]


def test_noise_free_images_follow_the_spgr_model(dro2mm, tmp_path):
    clean = make_dataset(tmp_path / "bids", participants=1, resolution_mm=2,
                         snr=float("inf"), seed=7)
    meta = json.loads((clean.truth_dir / "truth.json").read_text())
    assert meta["snr"] is None and meta["noise_sigma"]["sub-01"]["D0"] == 0.0
    # a different seed gives a different trial
    assert not _lesions(clean)["center_x_mm"].equals(
        _lesions(dro2mm).query("participant_id == 'sub-01'")["center_x_mm"].reset_index(
            drop=True))
    sub = "sub-01"
    for ses in SESSIONS:
        tdir = clean.truth_dir / sub / f"ses-{ses}"
        m0 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_M0map.nii.gz").astype(np.float64)
        t1 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_T1map.nii.gz").astype(np.float64)
        b1 = _load(tdir / f"{sub}_ses-{ses}_space-VFA_B1map.nii.gz").astype(np.float64)
        e1 = np.exp(-0.015 / np.where(t1 > 0, t1, 1.0))
        for n, fa in enumerate(FLIPS, start=1):
            img = _load(clean.bids_dir / sub / f"ses-{ses}" / "anat"
                        / f"{sub}_ses-{ses}_flip-{n}_VFA.nii.gz").astype(np.float64)
            a = b1 * math.radians(fa)
            model = np.where(t1 > 0, m0 * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a)), 0.0)
            np.testing.assert_allclose(img, model, rtol=2e-4, atol=1e-4)
            assert not img[m0 == 0].any()  # no noise, no signal outside the brain
        # MP2RAGE: both inversions share the background phase (INV1 flips by pi where its
        # signal is negative), and the noise-free UNI gives back the true T1 by look-up.
        anat = clean.bids_dir / sub / f"ses-{ses}" / "anat"
        mags = [_load(anat / f"{sub}_ses-{ses}_inv-{n}_part-mag_MP2RAGE.nii.gz")
                .astype(np.float64) for n in (1, 2)]
        phases = [_load(anat / f"{sub}_ses-{ses}_inv-{n}_part-phase_MP2RAGE.nii.gz")
                  .astype(np.float64) for n in (1, 2)]
        t1_mp = _load(tdir / f"{sub}_ses-{ses}_space-MP2RAGE_T1map.nii.gz").astype(np.float64)
        b1_mp = _load(tdir / f"{sub}_ses-{ses}_space-MP2RAGE_B1map.nii.gz").astype(np.float64)
        tissue = (t1_mp > 0) & (mags[1] > 1e-3 * mags[1].max())
        dphi = np.angle(np.exp(1j * (phases[0] - phases[1])))[tissue & (mags[0] > 1e-2)]
        assert np.all(np.minimum(np.abs(dphi), np.pi - np.abs(dphi)) < 1e-3)
        c1, c2 = (m * np.exp(1j * ph) for m, ph in zip(mags, phases, strict=True))
        uni = mp2rage.uni_from_signals(c1, c2)
        protocol = mp2rage.MP2RAGEProtocol(**dro_mod.MP2RAGE_PROTOCOL)
        fit = mp2rage.fit_t1_mp2rage(uni, protocol, b1=b1_mp, mask=tissue)
        assert fit.valid[tissue].mean() > 0.999
        # Only up to 3.5 s: near 4 s the UNI curve of this protocol reaches its turning point
        # (UNI = -0.5 where INV1 = -INV2; at 3.9-4 s for B1 0.82-0.86), where T1 is not
        # identifiable from float32 UNI -- a property of the sequence, not of the look-up.
        ok = tissue & fit.valid & (t1_mp <= 3.5)
        np.testing.assert_allclose(fit.t1_s[ok], t1_mp[ok], rtol=5e-3)
        unit1 = _load(anat / f"{sub}_ses-{ses}_UNIT1.nii.gz").astype(np.float64)
        assert np.abs(mp2rage.uni_from_unit1(unit1)[ok] - uni[ok]).max() <= 0.5 / 4095 + 1e-6
    # T1w: with the D0 pose = identity, the lesions enhance at D1 and not in placebo-free tissue
    seg = _load(clean.contours_dir / sub / "ses-D0" / "anat" / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz")
    d0 = _load(clean.bids_dir / sub / "ses-D0" / "anat" / f"{sub}_ses-D0_T1w.nii.gz")
    t1w_d0 = json.loads((clean.bids_dir / sub / "ses-D0" / "anat"
                         / f"{sub}_ses-D0_T1w.json").read_text())
    assert t1w_d0["FlipAngle"] == 20
    assert d0[seg > 0].min() > 0
