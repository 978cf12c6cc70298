"""Bad input, exit codes and messages, isolation of a failing participant (issue: reliability).

Every case of the bad-input matrix asserts the exit code, that the message names the file (or
option) and the problem, that the input dataset is byte-identical afterwards, and that no
partial output remains. Cases that fail before processing cost a few seconds each (no workflow
is built); the isolation test runs one real participant.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_agquant.cli.run import main
from bids_agquant.validation import find_validator


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``root`` (symlinks followed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(dro2mm, tmp_path):
    """A private copy of the reference dataset that a test may break."""
    dest = tmp_path / "bids"
    shutil.copytree(dro2mm.bids_dir, dest)
    return dest


def _anat(bids: Path, sub: str, ses: str) -> Path:
    return bids / f"sub-{sub}" / f"ses-{ses}" / "anat"


def _run(bids, tmp_path, *extra, validate=False, participants=("03",)):
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--participant-label", *participants]
    if not validate:
        args.append("--skip-bids-validation")
    return main(args + list(extra))


def _no_output(tmp_path: Path) -> bool:
    """Nothing that could be mistaken for a result: no output dataset at all."""
    return not (tmp_path / "out").exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, data: np.ndarray, affine=None) -> None:
    img = nb.load(path)
    nb.Nifti1Image(data, img.affine if affine is None else affine, img.header).to_filename(path)


def _break_contour_empty(bids):
    path = next((bids / "derivatives" / "contours" / "sub-03").rglob("*_dseg.nii.gz"))
    img = nb.load(path)
    _rewrite(path, np.zeros(img.shape, np.int16))
    return path.name, "no labelled voxel"


def _break_contour_outside(bids):
    """Lesion 2 moved onto the edge of the image: the contour grid is grown by 12 slices so the
    file holds the whole lesion, half of which lies beyond the images' field of view."""
    path = next((bids / "derivatives" / "contours" / "sub-03").rglob("*_dseg.nii.gz"))
    img = nb.load(path)
    labels = np.asanyarray(img.dataobj).astype(np.int16)
    ijk = np.argwhere(labels == 2)
    ijk[:, 0] += img.shape[0] - int(ijk[:, 0].mean())  # centre onto the last slice
    grown = np.zeros((img.shape[0] + 12, *img.shape[1:]), np.int16)
    grown[: img.shape[0]] = np.where(labels == 2, 0, labels)
    grown[tuple(ijk.T)] = 2
    nb.Nifti1Image(grown, img.affine, img.header).to_filename(path)
    return path.name, "outside the field of view"


def _break_contour_grid(bids):
    path = next((bids / "derivatives" / "contours" / "sub-03").rglob("*_dseg.nii.gz"))
    img = nb.load(path)
    affine = img.affine.copy()
    affine[:3, 3] += 500.0  # half a metre away: a different scanner frame
    _rewrite(path, np.asanyarray(img.dataobj), affine)
    return path.name, "matches no session image"


def _break_truncated(bids):
    path = _anat(bids, "03", "D1") / "sub-03_ses-D1_flip-2_VFA.nii.gz"
    _truncate(path)
    return path.name, "corrupt or truncated"


def _break_garbage(bids):
    path = _anat(bids, "03", "D0") / "sub-03_ses-D0_T1w.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    return path.name, "not a readable NIfTI"


def _break_4d(bids):
    path = _anat(bids, "03", "D8") / "sub-03_ses-D8_T1w.nii.gz"
    data = np.asanyarray(nb.load(path).dataobj)
    _rewrite(path, np.stack([data, data], axis=-1))
    return path.name, "one 3-D volume is expected"


def _break_nan(bids):
    path = _anat(bids, "03", "D1") / "sub-03_ses-D1_flip-1_VFA.nii.gz"
    data = np.asanyarray(nb.load(path).dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    _rewrite(path, data)
    return path.name, "2 NaN/Inf voxel"


def _break_single_flip(bids):
    for f in _anat(bids, "03", "D1").glob("sub-03_ses-D1_flip-[2-9]_VFA.*"):
        f.unlink()
    return "sub-03_ses-D1_flip-1_VFA", "at least two flip angles"


def _break_mixed_tr(bids):
    sidecar = _anat(bids, "03", "D8") / "sub-03_ses-D8_flip-2_VFA.json"
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTimeExcitation"] = 0.020
    sidecar.write_text(json.dumps(meta))
    return "ses-D8/anat", "differ in RepetitionTimeExcitation"


def _break_string_sidecar(bids):
    sidecar = _anat(bids, "03", "D1") / "sub-03_ses-D1_flip-3_VFA.json"
    meta = json.loads(sidecar.read_text())
    meta["FlipAngle"] = "ten degrees"
    sidecar.write_text(json.dumps(meta))
    return "sub-03_ses-D1_flip-3_VFA", "FlipAngle = 'ten degrees' is not a number"


def _break_missing_sidecar_key(bids):
    sidecar = _anat(bids, "03", "D1") / "sub-03_ses-D1_flip-3_VFA.json"
    meta = json.loads(sidecar.read_text())
    meta.pop("RepetitionTimeExcitation")
    sidecar.write_text(json.dumps(meta))
    for top in bids.glob("*VFA.json"):
        top_meta = json.loads(top.read_text())
        top_meta.pop("RepetitionTimeExcitation", None)
        top.write_text(json.dumps(top_meta))
    return "sub-03_ses-D1_flip-3_VFA", "RepetitionTimeExcitation"


def _break_baseline_t1_data(bids):
    for f in _anat(bids, "03", "D0").glob("*_VFA.*"):
        f.unlink()
    return "sub-03/ses-D0/anat", "T1 mapping is impossible"


def _break_baseline_t1w(bids):
    for f in _anat(bids, "03", "D0").glob("*_T1w.*"):
        f.unlink()
    return "sub-03/ses-D0/anat", "no *_T1w"


def _break_baseline_session(bids):
    shutil.rmtree(bids / "sub-03" / "ses-D0")
    for tsv in (bids / "sub-03").glob("*_sessions.tsv"):
        table = pd.read_csv(tsv, sep="\t")
        table[table["session_id"] != "ses-D0"].to_csv(tsv, sep="\t", index=False)
    return "ses-D0", "baseline session ses-D0 not found"


# (break function, exit code): everything a multicentre dataset gets wrong, before processing.
BAD_INPUT = {
    "truncated_nifti": (_break_truncated, 65),
    "not_a_nifti": (_break_garbage, 65),
    "4d_instead_of_3d": (_break_4d, 65),
    "nan_inf_voxels": (_break_nan, 65),
    "vfa_single_flip_angle": (_break_single_flip, 66),
    "vfa_mixed_tr": (_break_mixed_tr, 65),
    "sidecar_string": (_break_string_sidecar, 65),
    "sidecar_key_missing": (_break_missing_sidecar_key, 66),
    "baseline_session_missing": (_break_baseline_session, 66),
    "baseline_t1_data_missing": (_break_baseline_t1_data, 66),
    "baseline_t1w_missing": (_break_baseline_t1w, 66),
    "contour_empty": (_break_contour_empty, 65),
    "contour_outside_fov": (_break_contour_outside, 65),
    "contour_grid_matches_nothing": (_break_contour_grid, 65),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_with_a_message(case, raw, tmp_path, caplog):
    breaker, expected = BAD_INPUT[case]
    what, problem = breaker(raw)
    before = snapshot(raw)
    code = _run(raw, tmp_path)
    assert code == expected, caplog.text
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert what in errors and problem in errors, errors
    assert "sub-03" in errors
    assert snapshot(raw) == before
    assert _no_output(tmp_path)


def test_validation_failure_shows_the_validators_message(raw, tmp_path, caplog):
    if find_validator() is None:
        pytest.fail("bids-validator-deno is a dependency and must be installed")
    (raw / "sub-03" / "ses-D1" / "anat" / "sub-03_ses-D1_notbids.txt").write_text("x")
    before = snapshot(raw)
    code = _run(raw, tmp_path, validate=True)
    assert code == 16
    assert "BIDS validation failed" in caplog.text
    assert "NOT_INCLUDED" in caplog.text and "notbids" in caplog.text  # the validator's words
    assert snapshot(raw) == before
    assert _no_output(tmp_path)


@pytest.mark.parametrize(("where", "code"), [
    ("output_in_input", 64), ("output_in_input_derivatives", 64), ("work_in_input", 64),
    ("work_in_output", 64), ("output_is_a_file", 73),
])
def test_output_and_work_locations(where, code, raw, tmp_path, caplog):
    out, work = tmp_path / "out", tmp_path / "work"
    if where == "output_in_input":
        out = raw / "results"
    elif where == "output_in_input_derivatives":
        out = raw / "derivatives" / "bids-agquant"
    elif where == "work_in_input":
        work = raw / "work"
    elif where == "work_in_output":
        work = out / "work"
    else:
        (tmp_path / "file").write_text("in the way")
        out = tmp_path / "file" / "out"
    before = snapshot(raw)
    result = main([str(raw), str(out), "participant", "--participant-label", "03", "-w",
                   str(work), "--skip-bids-validation"])
    assert result == code
    assert ("must not be" in caplog.text) or ("cannot create" in caplog.text)
    assert snapshot(raw) == before
    assert not (tmp_path / "out").exists() and not (raw / "results").exists()


@pytest.mark.parametrize(("option", "value", "code", "message"), [
    ("--participant-label", "99", 66, "sub-99"),
    ("--session-label", "D5", 66, "ses-D5"),
    ("--participant-label", "../../etc", 64, "not a BIDS label"),
    ("--session-label", "D1/../../x", 64, "not a BIDS label"),
])
def test_labels_exist_and_are_sanitised(option, value, code, message, raw, tmp_path, caplog,
                                        capsys):
    before = snapshot(raw)
    with pytest.raises(SystemExit) if code == 64 else _nothing() as raised:
        result = main([str(raw), str(tmp_path / "out"), "participant", option, value,
                       "--skip-bids-validation", "-w", str(tmp_path / "work")])
    if code == 64:
        assert raised.value.code == 64
        assert message in capsys.readouterr().err
    else:
        assert result == code
        assert message in caplog.text
        # The message lists what exists, so the user can fix the label.
        assert ("sub-01" in caplog.text) if "participant" in option else ("ses-D1" in caplog.text)
    assert snapshot(raw) == before
    assert _no_output(tmp_path)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_missing_dose_and_weight_skip_dose_features_with_a_warning(raw, caplog):
    from bids_agquant.plan import collect_plan, load_layout
    from bids_agquant.preflight import check_plan

    table = pd.read_csv(raw / "participants.tsv", sep="\t")
    table.drop(columns=["dose_mg_per_kg", "weight_kg"]).to_csv(raw / "participants.tsv",
                                                                 sep="\t", index=False)
    plan = collect_plan(load_layout(raw), "01", contours_dir=raw / "derivatives" / "contours")
    check_plan(plan)
    assert plan.dose_mg_per_kg is None and plan.weight_kg is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("dose_mg_per_kg or weight_kg" in w and "skipped" in w for w in warnings)


def test_sidecar_values_in_ms_and_strings_are_read(raw):
    from bids_agquant.plan import collect_plan, load_layout

    for flip, value in ((1, "15 ms"), (2, 15), (3, "0.015")):
        sidecar = _anat(raw, "03", "D1") / f"sub-03_ses-D1_flip-{flip}_VFA.json"
        meta = json.loads(sidecar.read_text())
        meta["RepetitionTimeExcitation"] = value
        meta["FlipAngle"] = str(meta["FlipAngle"])
        sidecar.write_text(json.dumps(meta))
    plan = collect_plan(load_layout(raw), "03", contours_dir=raw / "derivatives" / "contours")
    d1 = next(tp for tp in plan.posts if tp.session == "D1")
    assert d1.vfa.repetition_time_s == pytest.approx(0.015)


@pytest.mark.slow
def test_a_failing_participant_does_not_stop_the_others(raw, dro2mm, tmp_path, caplog):
    """sub-02 has a truncated image; sub-03's D1 T1w is on another grid (a cropped field of
    view, which registration handles): sub-03 is processed and accurate, sub-02 is
    named with its problem, the run exits non-zero, the input is unchanged."""
    broken = _anat(raw, "02", "D0") / "sub-02_ses-D0_inv-2_part-mag_MP2RAGE.nii.gz"
    _truncate(broken)
    t1w = _anat(raw, "03", "D1") / "sub-03_ses-D1_T1w.nii.gz"
    img = nb.load(t1w)
    cropped = img.slicer[4:-4, 2:-6, 3:]
    cropped.to_filename(t1w)
    assert nb.load(t1w).shape != img.shape
    before = snapshot(raw)
    code = _run(raw, tmp_path, "--session-label", "D1", participants=("02", "03"))
    assert code == 65
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert broken.name in errors and "FAILED: sub-02" in errors
    assert "sub-03" not in errors.split("FAILED:")[1]
    assert snapshot(raw) == before
    out = tmp_path / "out"
    assert not (out / "sub-02").exists()
    truth = pd.read_csv(dro2mm.truth_dir / "lesions.tsv", sep="\t", na_values=["n/a"])
    table = pd.concat(pd.read_csv(t, sep="\t", na_values=["n/a"])
                      for t in (out / "sub-03").rglob("*_lesions.tsv"))
    expected = truth[(truth["participant_id"] == "sub-03") & (truth["session"] == "D1")]
    both = table.merge(expected, on=["timepoint", "lesion_id"], suffixes=("", "_true"))
    assert len(both) == len(expected)
    error = (both["gd_mM_mean"] - both["gd_mM_mean_true"]).abs()
    assert (error <= np.maximum(0.005, 0.1 * both["gd_mM_mean_true"].abs())).all(), both
