"""Plans for MP2RAGE, same-session pre/post and plain T1-mapping datasets (small synthetic
BIDS trees; no workflow run): defensive sidecar parsing and the messages on bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_agquant.cli.run import main
from bids_agquant.config import RunConfig, agent_for_timepoint, resolve_agent
from bids_agquant.errors import InputError
from bids_agquant.plan import collect_plan, load_layout
from bids_agquant.workflows.base import init_participant_wf

MP2RAGE_TOP = {"RepetitionTimeExcitation": 0.0071, "RepetitionTimePreparation": 5.0,
               "NumberShots": [44, 88], "MagneticFieldStrength": 3}


def _image(path: Path, shape=(9, 11, 7)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).uniform(1, 10, shape).astype(np.float32)
    nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _dataset(root: Path, *, sessions=("D0",), top=None, per_inv=None, phase=True, unit1=False,
             inv=True, t1w=True, ce=None) -> Path:
    """``sub-01`` with MP2RAGE at every session (and ``ce`` timepoint in the first one)."""
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    _json(root / "MP2RAGE.json", MP2RAGE_TOP if top is None else top)
    per_inv = per_inv or {1: {"FlipAngle": 4, "InversionTime": 0.7},
                          2: {"FlipAngle": 5, "InversionTime": 2.5}}
    timepoints = [(s, None) for s in sessions] + ([(sessions[0], ce)] if ce else [])
    for ses, agent in timepoints:
        folder = root / "sub-01" / (f"ses-{ses}" if ses else "") / "anat"
        stem = "sub-01" + (f"_ses-{ses}" if ses else "") + (f"_ce-{agent}" if agent else "")
        if t1w:
            _image(folder / f"{stem}_T1w.nii.gz")
        if inv:
            for n in (1, 2):
                for part in ("mag", "phase") if phase else ("mag",):
                    _image(folder / f"{stem}_inv-{n}_part-{part}_MP2RAGE.nii.gz")
                    _json(folder / f"{stem}_inv-{n}_part-{part}_MP2RAGE.json", per_inv[n])
        if unit1:
            _image(folder / f"{stem}_UNIT1.nii.gz")
            _json(folder / f"{stem}_UNIT1.json", {"FlipAngle": [4, 5],
                                                  "InversionTime": [0.7, 2.5], **MP2RAGE_TOP})
    return root


def _plan(root: Path, **kw):
    return collect_plan(load_layout(root), "01", **kw)


def test_inherited_sidecar_and_number_shots_pair(tmp_path):
    plan = _plan(_dataset(tmp_path / "b"))
    mp = plan.baseline.mp2rage
    assert plan.baseline.methods == ["mp2rage"]
    assert mp.uni_source == "complex"
    assert mp.inversion_times_s == (0.7, 2.5)
    assert mp.flip_angles_deg == (4.0, 5.0)
    assert mp.repetition_time_preparation_s == 5.0
    assert mp.number_shots == (44, 88)
    assert mp.field_strength_T == 3.0
    assert mp.registration_image.name.endswith("inv-2_part-mag_MP2RAGE.nii.gz")
    assert plan.notes[0].startswith("only a baseline timepoint")


def test_strings_and_milliseconds_are_read_as_seconds(tmp_path, caplog):
    top = {**MP2RAGE_TOP, "RepetitionTimeExcitation": "7.1", "RepetitionTimePreparation": 5000,
           "NumberShots": "[44, 88]"}
    per_inv = {1: {"FlipAngle": "4", "InversionTime": "700 ms"},
               2: {"FlipAngle": 5.0, "InversionTime": 2500}}
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        mp = _plan(_dataset(tmp_path / "b", top=top, per_inv=per_inv)).baseline.mp2rage
    assert mp.repetition_time_excitation_s == pytest.approx(0.0071)
    assert mp.repetition_time_preparation_s == pytest.approx(5.0)
    assert mp.inversion_times_s == pytest.approx((0.7, 2.5))
    assert mp.flip_angles_deg == (4.0, 5.0)
    assert mp.number_shots == (44, 88)
    assert "looks like milliseconds" in caplog.text


@pytest.mark.parametrize(("extra", "shots", "word"), [
    ({"NumberShots": 132}, (66, 66), "symmetric"),
    ({"NumberShots": 132, "SlicesPerSlab": 176, "SlicePartialFourier": 0.75}, (44, 88),
     "SlicePartialFourier"),
])
def test_scalar_number_shots(tmp_path, extra, shots, word):
    mp = _plan(_dataset(tmp_path / "b", top={**MP2RAGE_TOP, **extra})).baseline.mp2rage
    assert mp.number_shots == shots
    assert word in mp.shots_decision


@pytest.mark.parametrize("key", ["RepetitionTimePreparation", "NumberShots",
                                 "RepetitionTimeExcitation"])
def test_missing_key_names_file_and_key_and_exits_66(tmp_path, key, caplog):
    top = {k: v for k, v in MP2RAGE_TOP.items() if k != key}
    root = _dataset(tmp_path / "b", top=top)
    with pytest.raises(InputError) as exc:
        _plan(root)
    assert exc.value.exit_code == 66
    # RepetitionTimeExcitation is read per inversion (MP2RAGE-ME): inv-1 is named first.
    inv = "inv-1" if key == "RepetitionTimeExcitation" else "inv-2"
    assert key in str(exc.value) and f"{inv}_part-mag_MP2RAGE" in str(exc.value)
    code = main([str(root), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "-w", str(tmp_path / "work")])
    assert code == 66
    assert key in caplog.text
    assert not (tmp_path / "out").exists()


def test_bad_number_shots_exits_65(tmp_path):
    with pytest.raises(InputError) as exc:
        _plan(_dataset(tmp_path / "b", top={**MP2RAGE_TOP, "NumberShots": [44.5, 88]}))
    assert exc.value.exit_code == 65
    assert "NumberShots" in str(exc.value)


def test_unit1_only_uses_its_sidecar_arrays(tmp_path):
    mp = _plan(_dataset(tmp_path / "b", inv=False, unit1=True)).baseline.mp2rage
    assert mp.uni_source == "unit1"
    assert mp.inversion_times_s == (0.7, 2.5)
    assert mp.registration_image.name.endswith("_UNIT1.nii.gz")


def test_magnitude_only_and_inv_without_partner(tmp_path):
    mp = _plan(_dataset(tmp_path / "a", phase=False)).baseline.mp2rage
    assert mp.uni_source == "magnitude"
    root = _dataset(tmp_path / "b", phase=False)
    next(root.rglob("*inv-1_part-mag_MP2RAGE.nii.gz")).unlink()
    with pytest.raises(InputError, match="inv-1 and inv-2"):
        _plan(root)


def test_same_session_pre_post_with_agent_from_ce_label(tmp_path):
    root = _dataset(tmp_path / "b", ce="AGuIX")
    (root / "sub-01" / "ses-D0" / "sub-01_ses-D0_scans.tsv").write_text(
        "filename\thours_post_injection\n"
        "anat/sub-01_ses-D0_T1w.nii.gz\tn/a\n"
        "anat/sub-01_ses-D0_ce-AGuIX_T1w.nii.gz\t2.5\n")
    plan = _plan(root)
    assert [tp.label for tp in plan.posts] == ["ses-D0_ce-AGuIX"]
    assert plan.posts[0].hours_post_injection == 2.5
    assert plan.baseline.hours_post_injection is None
    assert plan.methods_for(plan.posts[0]) == ["mp2rage"]


def test_post_without_a_shared_method_is_refused(tmp_path):
    root = _dataset(tmp_path / "b", sessions=("D0", "D1"))
    for f in (root / "sub-01" / "ses-D1" / "anat").glob("*MP2RAGE*"):
        f.unlink()
    _image(root / "sub-01" / "ses-D1" / "anat" / "sub-01_ses-D1_flip-1_VFA.nii.gz")
    _image(root / "sub-01" / "ses-D1" / "anat" / "sub-01_ses-D1_flip-2_VFA.nii.gz")
    for n, fa in ((1, 3), (2, 20)):
        _json(root / "sub-01" / "ses-D1" / "anat" / f"sub-01_ses-D1_flip-{n}_VFA.json",
              {"FlipAngle": fa, "RepetitionTimeExcitation": 0.015})
    with pytest.raises(InputError, match="same T1 method"):
        _plan(root)


def test_plain_t1_mapping_dataset_without_sessions_or_t1w(tmp_path):
    root = _dataset(tmp_path / "b", sessions=(None,), t1w=False)
    plan = _plan(root)
    assert plan.baseline.session is None and plan.posts == []
    config = RunConfig(root, tmp_path / "out", "participant", tmp_path / "work")
    workflow = init_participant_wf(plan, config)
    names = set(workflow.list_node_names())
    assert "mp2rage_t1map_baseline_wf.fit_mp2rage" in names
    assert {"ds_t1map_mp2rage_baseline", "ds_r1map_mp2rage_baseline"} <= names
    assert not any(name.startswith("reg_") for name in names)


def test_agent_for_timepoint():
    nanorad = resolve_agent("aguix-nanorad")
    agent, why = agent_for_timepoint("gadoterate", nanorad, 3.0)
    assert agent.name == "gadoterate" and agent.r1_per_mM_per_s == 3.5 and "preset" in why
    mp2rage = resolve_agent("aguix-mp2rage", r1=6.5)
    agent, _ = agent_for_timepoint("AGuIX", mp2rage, 3.0)
    assert agent is mp2rage  # the participant's own substance keeps its overrides
    agent, why = agent_for_timepoint("contrast", nanorad, 3.0)
    assert agent is nanorad and "no preset" in why
    custom = resolve_agent(None, r1=7.3)
    agent, why = agent_for_timepoint("gadoterate", custom, 3.0)
    assert agent is custom and "user-supplied" in why
