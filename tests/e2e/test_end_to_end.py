"""End to end through the CLI on the reference dataset (2 mm, default SNR), against its truth.

One demo run (reference dataset → participant → group) is shared by every test here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_agquant.cli.run import main as run_main
from bids_agquant.interfaces.ants import ants_transform_to_ras
from bids_agquant.validation import find_validator

pytestmark = pytest.mark.slow

@pytest.fixture(scope="session")
def demo(reference_run):
    """The shared participant + group run on the reference dataset (tests/conftest.py)."""
    return reference_run


def _truth_lesions(demo) -> pd.DataFrame:
    return pd.read_csv(demo["truth"] / "lesions.tsv", sep="\t", na_values=["n/a"])


def _participants(demo) -> pd.DataFrame:
    return pd.read_csv(demo["bids"] / "participants.tsv", sep="\t", na_values=["n/a"])


def _detail(demo, pid: str) -> dict:
    truth = json.loads((demo["truth"] / "truth.json").read_text())
    return truth["participants_detail"][pid]


def _posts(demo, pid: str) -> list[tuple[str, str]]:
    """(timepoint key, BIDS label) of every post-agent timepoint of a participant."""
    return [(key, label) for key, label in _detail(demo, pid)["timepoints"].items()
            if key != "D0"]


def _anat(demo, pid: str, label: str) -> Path:
    session = label.split("_")[0]
    return demo["out"] / pid / session / "anat"


def _estimated(demo, pid: str, label: str, method: str = "vfa") -> pd.DataFrame:
    path = _anat(demo, pid, label) / f"{pid}_{label}_desc-{method}_lesions.tsv"
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def test_every_output_of_the_contract_exists_and_nothing_else(demo):
    """The run wrote exactly what its recorded plan and configuration say it writes
    (``derivatives.expected_outputs``), each data file with its sidecar."""
    from bids_agquant.config import RunConfig
    from bids_agquant.derivatives import PLAN_FILE, RUN_CONFIG_FILE, expected_outputs
    from bids_agquant.plan import ParticipantPlan

    out = demo["out"]
    for subject in demo["subjects"]:
        (log_dir,) = (out / f"sub-{subject}" / "log").iterdir()
        plan = ParticipantPlan.from_json((log_dir / PLAN_FILE).read_text())
        config = RunConfig.from_toml((log_dir / RUN_CONFIG_FILE).read_text())
        assert plan.subject == subject and config.bids_dir == demo["bids"]
        expected = {o.relpath for o in expected_outputs(plan, config)}
        written = {p.relative_to(out).as_posix() for p in (out / f"sub-{subject}").rglob("*")
                   if p.is_file() and "log" not in p.relative_to(out).parts
                   and p.suffix != ".json"}
        assert written == expected, (sorted(written - expected), sorted(expected - written))
        for rel in expected:
            sidecar = (out / rel).with_name(
                (out / rel).name.split(".")[0] + ".json")
            assert sidecar.is_file(), rel


def test_every_output_named_per_design(demo):
    out = demo["out"]
    for name in ("dataset_description.json", ".bidsignore", "descriptions.tsv",
                 "group_lesions.tsv", "group_participants.tsv"):
        assert (out / name).is_file(), name
    for pid in _participants(demo)["participant_id"]:
        methods = _detail(demo, pid)["t1_methods"]
        base = out / pid / "ses-D0" / "anat"
        assert (base / f"{pid}_ses-D0_desc-GTV_dseg.nii.gz").is_file()
        for method in methods:
            for name in (f"{pid}_ses-D0_desc-{method}_T1map.nii.gz",
                         f"{pid}_ses-D0_desc-{method}_R1map.nii.gz",
                         f"{pid}_ses-D0_space-D0_desc-{method}_R1map.nii.gz"):
                assert (base / name).is_file(), name
        for _key, label in _posts(demo, pid):
            anat = _anat(demo, pid, label)
            stem = f"{pid}_{label}"
            expected = [
                f"{stem}_space-D0_desc-t1w_enhancement.nii.gz",
                f"{stem}_space-D0_desc-GTV_dseg.nii.gz", f"{stem}_desc-GTV_dseg.nii.gz",
                f"{stem}_from-orig_to-D0_mode-image_xfm.mat",
                f"{stem}_space-D0_desc-preproc_T1w.nii.gz",  # registration check (report)
            ]
            for method in methods:
                expected += [
                    f"{stem}_desc-{method}_T1map.nii.gz", f"{stem}_desc-{method}_R1map.nii.gz",
                    f"{stem}_space-D0_desc-{method}_R1map.nii.gz",
                    f"{stem}_space-D0_desc-{method}_deltaR1map.nii.gz",
                    f"{stem}_space-D0_desc-{method}_Gdconc.nii.gz",
                    f"{stem}_space-D0_desc-{method}_massconc.nii.gz",
                    f"{stem}_desc-{method}_lesions.tsv", f"{stem}_desc-{method}_lesions.json",
                ]
            for name in expected:
                assert (anat / name).is_file(), name
            for nii in anat.glob(f"{stem}_*.nii.gz"):
                sidecar = json.loads(Path(str(nii).replace(".nii.gz", ".json")).read_text())
                assert sidecar["Sources"], nii.name
                if "_dseg" not in nii.name:
                    assert "Units" in sidecar, nii.name
            for method in methods:
                gd_meta = json.loads(
                    (anat / f"{stem}_space-D0_desc-{method}_Gdconc.json").read_text())
                assert gd_meta["Units"] == "mmol/L"
                assert gd_meta["Relaxivity"] == pytest.approx(8.9)
                assert gd_meta["T1Method"] == method
                assert gd_meta["SpatialReference"].endswith(f"{pid}_ses-D0_T1w.nii.gz")


def test_mp2rage_maps_record_every_lookup_parameter(demo):
    meta = json.loads((demo["out"] / "sub-01" / "ses-D1" / "anat"
                       / "sub-01_ses-D1_desc-mp2rage_T1map.json").read_text())
    assert meta["NumberShots"] == [44, 88]
    assert meta["InversionTimes"] == [0.7, 2.5]
    assert meta["FlipAngle"] == [4.0, 5.0]
    assert meta["InversionEfficiency"] == 0.96
    # The session's own (raw, fraction) TB1map corrected the look-up.
    assert meta["B1Correction"] == "bids:raw:sub-01/ses-D1/fmap/sub-01_ses-D1_TB1map.nii.gz"
    assert meta["B1Method"] == "TB1map" and "fraction" in meta["B1Decision"]
    assert "complex" in meta["UNISource"] or "magnitude and phase" in meta["UNISource"]
    assert meta["Units"] == "s"


def test_lesion_table_columns(demo):
    table = _estimated(demo, "sub-01", "ses-D1")
    required = ["lesion_id", "timepoint", "t1_method", "volume_ml", "n_voxels",
                "equiv_diameter_mm", "longest_diameter_mm", "measurable", "gd_mM_mean",
                "gd_mM_sd", "gd_mM_median", "gd_mM_p25", "gd_mM_p75", "mass_mg_per_L_mean",
                "deltaR1_mean", "t1_baseline_s_mean", "t1_post_s_mean", "se_percent_mean",
                "negative_fraction"]
    assert not set(required) - set(table.columns)
    dictionary = json.loads((demo["out"] / "sub-01" / "ses-D1" / "anat"
                             / "sub-01_ses-D1_desc-vfa_lesions.json").read_text())
    assert dictionary["gd_mM_mean"]["Units"] == "mmol/L"
    # Lesion identity is the contour label: the same ids at D1 and D8.
    assert list(table["lesion_id"]) == list(_estimated(demo, "sub-01", "ses-D8")["lesion_id"])


def test_gd_within_tolerance_of_truth_for_every_lesion_timepoint_and_method(demo):
    """Every lesion (sub-centimetre ones included), every post-agent timepoint (D1, D8 and the
    same-session post of sub-02), VFA and MP2RAGE: within max(0.005 mM, 10 %) of the true
    GTV mean."""
    truth = _truth_lesions(demo)
    participants = _participants(demo)
    treated = participants[participants["agent"].str.lower() != "placebo"]["participant_id"]
    checked = {"vfa": 0, "mp2rage": 0}
    for pid in treated:
        for _key, label in _posts(demo, pid):
            rows = truth[(truth["participant_id"] == pid) & (truth["timepoint"] == label)]
            for method in _detail(demo, pid)["t1_methods"]:
                est = _estimated(demo, pid, label, method).set_index("lesion_id")
                for _, row in rows.iterrows():
                    estimate = est.loc[int(row["lesion_id"]), "gd_mM_mean"]
                    tolerance = max(0.005, 0.10 * abs(row["gd_mM_mean"]))
                    assert abs(estimate - row["gd_mM_mean"]) <= tolerance, (
                        pid, label, method, int(row["lesion_id"]), estimate, row["gd_mM_mean"])
                    checked[method] += 1
    assert checked == {"vfa": 6, "mp2rage": 9}, checked


def test_placebo_mean_near_zero(demo):
    participants = _participants(demo)
    placebo = participants[participants["agent"].str.lower() == "placebo"]["participant_id"]
    assert len(placebo) == 1
    pid = placebo.iloc[0]
    for _key, label in _posts(demo, pid):
        est = _estimated(demo, pid, label)
        assert (est["gd_mM_mean"].abs() < 0.003).all(), est[["lesion_id", "gd_mM_mean"]]
        # no uptake is never reported as a measurement
        assert (est["quantification"] == "<LoQ").all(), est[["lesion_id", "quantification"]]


def test_treated_lesions_are_quantified_and_healthy_controls_pass(demo):
    participants = _participants(demo)
    placebo = set(participants[participants["agent"].str.lower() == "placebo"]["participant_id"])
    for pid in participants["participant_id"]:
        for _key, label in _posts(demo, pid):
            for method in _detail(demo, pid)["t1_methods"]:
                controls = pd.read_csv(_anat(demo, pid, label)
                                       / f"{pid}_{label}_desc-{method}_controls.tsv", sep="\t")
                assert len(controls) == 3 and not controls["control_failed"].any()
                if pid not in placebo:
                    est = _estimated(demo, pid, label, method)
                    assert (est["quantification"] == "quantified").all(), (pid, label, method)


def test_measurable_flag_and_size_match_truth(demo):
    truth = _truth_lesions(demo)
    for pid in _participants(demo)["participant_id"]:
        _key, label = _posts(demo, pid)[0]
        method = _detail(demo, pid)["t1_methods"][0]
        est = _estimated(demo, pid, label, method).set_index("lesion_id")
        rows = truth[(truth["participant_id"] == pid) & (truth["timepoint"] == label)]
        for _, row in rows.iterrows():
            lesion = est.loc[int(row["lesion_id"])]
            voxel_mm = 2.0
            assert abs(lesion["equiv_diameter_mm"] - row["equiv_diameter_mm"]) <= voxel_mm
            assert bool(lesion["measurable"]) == bool(row["measurable"])


def _brain_points(demo, pid) -> np.ndarray:
    mask_img = nb.load(demo["truth"] / pid / f"{pid}_space-D0_desc-brain_mask.nii.gz")
    ijk = np.argwhere(np.asarray(mask_img.dataobj) > 0)
    return nb.affines.apply_affine(mask_img.affine, ijk)


def test_registration_matches_true_motion(demo):
    transforms = json.loads((demo["truth"] / "transforms.json").read_text())
    for pid in _participants(demo)["participant_id"]:
        points = _brain_points(demo, pid)
        kinds = {"vfa": "VFA", "mp2rage": "MP2RAGE"}
        timepoints = _detail(demo, pid)["timepoints"]
        for key, label in timepoints.items():
            anat = _anat(demo, pid, label)
            pose_t1w = np.array(transforms[pid][key]["T1w"])
            checks = []
            for method in _detail(demo, pid)["t1_methods"]:
                kind = kinds[method]
                pose = np.array(transforms[pid][key][kind])
                checks.append((anat / f"{pid}_{label}_from-{kind}_to-T1w_mode-image_xfm.mat",
                               pose @ np.linalg.inv(pose_t1w), pose_t1w))
            if key != "D0":
                checks.append((anat / f"{pid}_{label}_from-orig_to-D0_mode-image_xfm.mat",
                               pose_t1w, np.eye(4)))
            for xfm, truth, fixed_pose in checks:
                # Evaluate over the brain as it sits in the fixed image of that registration.
                fixed_points = nb.affines.apply_affine(fixed_pose, points)
                estimated = ants_transform_to_ras(xfm)
                error = np.linalg.norm(nb.affines.apply_affine(estimated, fixed_points)
                                       - nb.affines.apply_affine(truth, fixed_points), axis=1)
                assert error.mean() < 1.0, (xfm.name, error.mean())


def test_derivatives_pass_bids_validator(demo):
    exe = find_validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install '.[test]')")
    proc = subprocess.run([exe, "--no-color", "--ignoreWarnings", "--format", "json",
                           str(demo["out"])], capture_output=True, text=True, check=False)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert errors == [], errors[:5]
    assert proc.returncode == 0


def test_group_table_gathers_every_participant(demo):
    group = pd.read_csv(demo["out"] / "group_lesions.tsv", sep="\t")
    truth = _truth_lesions(demo)
    assert set(group["participant_id"]) == set(_participants(demo)["participant_id"])
    expected = sum(len(truth[(truth["participant_id"] == pid) & (truth["timepoint"] != "ses-D0")])
                   * len(_detail(demo, pid)["t1_methods"])
                   for pid in _participants(demo)["participant_id"])
    assert len(group) == expected
    assert set(group["t1_method"]) == {"vfa", "mp2rage"}


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_rerun_reuses_the_nipype_cache_and_leaves_input_untouched(demo):
    reg_results = sorted(demo["work"].glob("**/register/transform.mat"))
    assert reg_results
    before = {p: p.stat().st_mtime_ns for p in reg_results}
    raw_before = _snapshot(demo["bids"])
    code = run_main([str(demo["bids"]), str(demo["out"]), "participant", "-w", str(demo["work"]),
                     "--participant-label", "01"])
    assert code == 0
    for path, mtime in before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was recomputed"
    assert _snapshot(demo["bids"]) == raw_before, "the input dataset was written to"


def test_vfa_flips_on_different_grids_are_refused_before_processing(demo, tmp_path, caplog):
    """Flips are fitted voxel by voxel: a flip on another grid is caught by the pre-flight
    checks (exit 65, file named, nothing written) instead of crashing a node half-way.
    A failing node (exit 1, crash file, report) is tested in test_reports.py."""
    bids = tmp_path / "bids"
    shutil.copytree(demo["bids"], bids)
    flip = bids / "sub-01" / "ses-D8" / "anat" / "sub-01_ses-D8_flip-2_VFA.nii.gz"
    img = nb.load(flip)
    nb.Nifti1Image(np.asarray(img.dataobj)[:-4], img.affine).to_filename(flip)
    out = tmp_path / "out"
    code = run_main([str(bids), str(out), "participant", "--participant-label", "01",
                     "--session-label", "D8", "-w", str(tmp_path / "work"),
                     "--skip-bids-validation", "--sloppy"])
    assert code == 65
    assert flip.name in caplog.text and "different voxel grid" in caplog.text
    assert not out.exists()


def test_persistence_ratios_match_truth(demo):
    truth = _truth_lesions(demo)
    rows = truth[truth["participant_id"] == "sub-01"].set_index(["timepoint", "lesion_id"])
    for method in ("vfa", "mp2rage"):
        table = pd.read_csv(_anat(demo, "sub-01", "ses-D8")
                            / f"sub-01_ses-D8_desc-{method}_persistence.tsv", sep="\t")
        assert set(table["early_timepoint"]) == {"ses-D1"}
        for _, row in table.iterrows():
            expected = (rows.loc[("ses-D8", row["lesion_id"]), "gd_mM_mean"]
                        / rows.loc[("ses-D1", row["lesion_id"]), "gd_mM_mean"])
            assert abs(row["gd_mM_mean_ratio"] - expected) < 0.03, (method, row["lesion_id"])
