"""Real-site data on small synthetic BIDS trees: B1+ in every BIDS representation, any field
strength, MP2RAGE-ME, vendor exports (issue 14). Plans and pre-flight only; the end-to-end
runs are in tests/e2e/test_b1_sources.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_agquant.cli.workflow import resolve_agents, select_participants
from bids_agquant.config import RunConfig
from bids_agquant.errors import EX_DATAERR, EX_NOINPUT, InputError
from bids_agquant.plan import collect_plan, load_layout
from bids_agquant.preflight import load_volume

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
MP2RAGE_TOP = {"RepetitionTimeExcitation": 0.0071, "RepetitionTimePreparation": 5.0,
               "NumberShots": [44, 88]}


def _image(path: Path, data=None, shape=(9, 11, 7)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(0).uniform(1, 10, shape).astype(np.float32)
    nb.Nifti1Image(data, AFFINE).to_filename(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _vfa_dataset(root: Path, *, sessions=("D0",), field=3.0, fmap=None) -> Path:
    """``sub-01`` with T1w + VFA per session; ``fmap`` = {file name: sidecar} per session."""
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    for ses in sessions:
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        _image(anat / f"sub-01_ses-{ses}_T1w.nii.gz")
        for n, flip in enumerate((2, 10), start=1):
            _image(anat / f"sub-01_ses-{ses}_flip-{n}_VFA.nii.gz")
            side = {"FlipAngle": flip, "RepetitionTimeExcitation": 0.015,
                    "PulseSequenceType": "SPGR"}
            if field is not None:
                side["MagneticFieldStrength"] = field
            _json(anat / f"sub-01_ses-{ses}_flip-{n}_VFA.json", side)
        for name, side in (fmap or {}).items():
            path = root / "sub-01" / f"ses-{ses}" / "fmap" / f"sub-01_ses-{ses}_{name}"
            _image(path.with_name(path.name + ".nii.gz"))
            _json(path.with_name(path.name + ".json"), side)
    return root


def _plan(root: Path, **kw):
    return collect_plan(load_layout(root), "01", **kw)


# ------------------------------------------------------------------ B1+ representations
def test_tb1tfl_pair_and_nominal_flip_from_the_famp_sidecar(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
        "acq-anat_TB1TFL": {"FlipAngle": "8"}, "acq-famp_TB1TFL": {"FlipAngle": "80"}}))
    b1 = plan.baseline.b1
    assert b1.suffix == "TB1TFL" and b1.method == "tfl" and b1.computed
    assert [f.name for f in b1.files] == ["sub-01_ses-D0_acq-anat_TB1TFL.nii.gz",
                                          "sub-01_ses-D0_acq-famp_TB1TFL.nii.gz"]
    assert b1.flip_angles_deg == [80.0]


def test_tb1tfl_freeform_acq_suffixes_pair_up(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
        "acq-anatTest_TB1TFL": {}, "acq-fampTest_TB1TFL": {"FlipAngle": 90}}))
    assert plan.baseline.b1.files[1].name == "sub-01_ses-D0_acq-fampTest_TB1TFL.nii.gz"


def test_tb1tfl_without_flip_angle_names_the_key(tmp_path):
    root = _vfa_dataset(tmp_path / "b", fmap={"acq-anat_TB1TFL": {}, "acq-famp_TB1TFL": {}})
    with pytest.raises(InputError, match=r"acq-famp_TB1TFL.*'FlipAngle' is missing") as err:
        _plan(root)
    assert err.value.exit_code == EX_NOINPUT


def test_tb1afi_reads_repetition_time_in_ms_and_orders_tr1_tr2(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
        "acq-tr1_TB1AFI": {"RepetitionTime": "20", "FlipAngle": 60},
        "acq-tr2_TB1AFI": {"RepetitionTime": 0.1, "FlipAngle": 60}}))
    b1 = plan.baseline.b1
    assert b1.suffix == "TB1AFI" and b1.repetition_times_s == [0.02, 0.1]
    assert b1.flip_angles_deg == [60.0]


def test_tb1afi_with_tr2_shorter_is_refused(tmp_path):
    root = _vfa_dataset(tmp_path / "b", fmap={
        "acq-tr1_TB1AFI": {"RepetitionTime": 0.1, "FlipAngle": 60},
        "acq-tr2_TB1AFI": {"RepetitionTime": 0.02, "FlipAngle": 60}})
    with pytest.raises(InputError, match="longer RepetitionTime") as err:
        _plan(root)
    assert err.value.exit_code == EX_DATAERR


def test_tb1dam_needs_double_angle(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
        "flip-1_TB1DAM": {"FlipAngle": 60}, "flip-2_TB1DAM": {"FlipAngle": 120}}))
    assert plan.baseline.b1.flip_angles_deg == [60.0, 120.0]
    root = _vfa_dataset(tmp_path / "c", fmap={
        "flip-1_TB1DAM": {"FlipAngle": 60}, "flip-2_TB1DAM": {"FlipAngle": 90}})
    with pytest.raises(InputError, match="2 × flip-1"):
        _plan(root)


SRGE = {"RepetitionTimePreparation": 2.4, "RepetitionTimeExcitation": 0.00275}


def test_tb1srge_parameters_and_number_shots(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
        "flip-1_inv-1_TB1SRGE": {**SRGE, "FlipAngle": 4, "InversionTime": 47,
                                 "NumberShots": [16.67, 27.33]},
        "flip-2_inv-2_TB1SRGE": {**SRGE, "FlipAngle": 10, "InversionTime": 1.8,
                                 "NumberShots": [16.67, 27.33]}}))
    b1 = plan.baseline.b1
    assert b1.suffix == "TB1SRGE" and b1.method == "sa2rage"
    assert b1.flip_angles_deg == [4.0, 10.0]
    assert b1.inversion_times_s == pytest.approx([0.047, 1.8])
    assert b1.repetition_times_s == [2.4, 0.00275]
    assert b1.number_shots == [16.67, 27.33]


def test_tb1srge_number_shots_from_the_phase_encoding_keys(tmp_path, caplog):
    pe_keys = {"BaseResolution": 128, "PartialFourier": 0.75,
               "ParallelReductionFactorInPlane": 2, "RefLinesPE": 30}
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
            "flip-1_inv-1_TB1SRGE": {**SRGE, **pe_keys, "FlipAngle": 4, "InversionTime": 0.047},
            "flip-2_inv-2_TB1SRGE": {**SRGE, **pe_keys, "FlipAngle": 10,
                                     "InversionTime": 1.8}}))
    # BIDS qMRI appendix: 128 [0.25, 0.5] / 2 + 30/2 (1 - 1/2)
    assert plan.baseline.b1.number_shots == pytest.approx([23.5, 39.5])
    assert "NumberShots computed" in caplog.text
    root = _vfa_dataset(tmp_path / "c", fmap={
        "flip-1_inv-1_TB1SRGE": {**SRGE, "FlipAngle": 4, "InversionTime": 0.047},
        "flip-2_inv-2_TB1SRGE": {**SRGE, "FlipAngle": 10, "InversionTime": 1.8}})
    with pytest.raises(InputError, match="'NumberShots' is missing.*BaseResolution"):
        _plan(root)


def test_a_given_tb1map_wins_over_raw_images_with_an_info_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        plan = _plan(_vfa_dataset(tmp_path / "b", fmap={
            "TB1map": {"Units": "percent"}, "acq-anat_TB1TFL": {},
            "acq-famp_TB1TFL": {"FlipAngle": 80}}))
    assert plan.baseline.b1.suffix == "TB1map" and plan.baseline.b1.units == "percent"
    assert "B1+ from TB1map; TB1TFL ignored" in caplog.text


def test_incomplete_raw_b1_set_is_refused(tmp_path):
    root = _vfa_dataset(tmp_path / "b", fmap={"acq-famp_TB1TFL": {"FlipAngle": 80}})
    with pytest.raises(InputError, match="do not form a complete set"):
        _plan(root)


def test_one_b1_per_session_is_shared_and_survives_the_plan_json(tmp_path):
    from bids_agquant.plan import ParticipantPlan

    plan = _plan(_vfa_dataset(tmp_path / "b", sessions=("D0", "D1"), fmap={
        "acq-anat_TB1TFL": {}, "acq-famp_TB1TFL": {"FlipAngle": 80}}))
    assert plan.posts[0].b1.files[0].parent.parent.name == "ses-D1"
    again = ParticipantPlan.from_json(plan.to_json())
    assert again.baseline.b1 == plan.baseline.b1


# ------------------------------------------------------------------ field strength
@pytest.mark.parametrize("field", [1.5, 7.0, None])
def test_plain_t1_mapping_works_at_any_field(tmp_path, field):
    plan = _plan(_vfa_dataset(tmp_path / "b", field=field))
    resolve_agents(plan, RunConfig(bids_dir=tmp_path / "b"))
    assert plan.agent_parameters is None  # no conversion, no relaxivity needed


def test_post_agent_conversion_at_7t_names_the_field(tmp_path):
    plan = _plan(_vfa_dataset(tmp_path / "b", sessions=("D0", "D1"), field=7.0))
    with pytest.raises(InputError, match=r"no relaxivity at 7 T.*MagneticFieldStrength 7 T "
                                          r"in the sidecar of sub-01_ses-D0_flip-1_VFA") as err:
        resolve_agents(plan, RunConfig(bids_dir=tmp_path / "b"))
    assert err.value.exit_code == EX_DATAERR
    resolve_agents(plan, RunConfig(bids_dir=tmp_path / "b", r1=5.0))  # --r1 converts anywhere
    assert plan.agent_parameters.r1_per_mM_per_s == 5.0


@pytest.mark.parametrize(("reported", "r1"), [(2.89, 8.9), (3.0, 8.9), (2.95, 8.9)])
def test_scanner_reported_field_maps_to_its_nominal_field(tmp_path, reported, r1):
    """Siemens 3 T systems report 2.89 T: the 3 T relaxivity applies."""
    plan = _plan(_vfa_dataset(tmp_path / "b", sessions=("D0", "D1"), field=reported))
    resolve_agents(plan, RunConfig(bids_dir=tmp_path / "b"))
    assert plan.agent_parameters.r1_per_mM_per_s == r1


def test_missing_field_strength_with_posts_is_a_warning(tmp_path, caplog):
    plan = _plan(_vfa_dataset(tmp_path / "b", sessions=("D0", "D1"), field=None))
    with caplog.at_level(logging.WARNING, logger="bids_agquant"):
        resolve_agents(plan, RunConfig(bids_dir=tmp_path / "b"))
    assert plan.agent_parameters.field_strength_T == 3.0
    assert "no baseline sidecar states MagneticFieldStrength" in caplog.text


def test_ce_agent_without_relaxivity_at_the_field_is_refused_not_replaced(tmp_path):
    """ce-gadoterate at 7 T must not silently take the participant's AGuIX r1."""
    from bids_agquant.config import NoRelaxivityError, agent_for_timepoint, resolve_agent

    main = resolve_agent("aguix-nanorad", field_strength_T=7.0, r1=8.0)
    with pytest.raises(NoRelaxivityError, match="gadoterate"):
        agent_for_timepoint("gadoterate", main, 7.0)
    agent, _ = agent_for_timepoint("AGuIX", main, 7.0)  # own substance: its constants
    assert agent is main


# ------------------------------------------------------------------ MP2RAGE variants
def _mp2rage_me(root: Path, tau_inv2) -> Path:
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    _json(root / "MP2RAGE.json", {"RepetitionTimePreparation": 5.0, "NumberShots": [44, 88],
                                  "MagneticFieldStrength": 7})
    anat = root / "sub-01" / "anat"
    _image(anat / "sub-01_inv-1_part-mag_MP2RAGE.nii.gz")
    _json(anat / "sub-01_inv-1_part-mag_MP2RAGE.json",
          {"FlipAngle": 4, "InversionTime": 0.7, "RepetitionTimeExcitation": 0.0062})
    for echo in (1, 2, 3, 4):
        _image(anat / f"sub-01_inv-2_echo-{echo}_part-mag_MP2RAGE.nii.gz")
        _json(anat / f"sub-01_inv-2_echo-{echo}_part-mag_MP2RAGE.json",
              {"FlipAngle": 5, "InversionTime": 2.5, "RepetitionTimeExcitation": tau_inv2,
               "EchoTime": 0.003 * echo})
    return root


def test_mp2rage_me_uses_the_first_echo_and_each_trains_echo_spacing(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        plan = collect_plan(load_layout(_mp2rage_me(tmp_path / "b", 0.032)), "01")
    mp = plan.baseline.mp2rage
    assert mp.inv2.name == "sub-01_inv-2_echo-1_part-mag_MP2RAGE.nii.gz"
    assert mp.repetition_time_excitation_s == 0.0062
    assert mp.repetition_time_excitation_inv2_s == 0.032
    assert caplog.text.count("first echo") == 1
    assert "its own echo spacing" in caplog.text
    fields = mp.protocol_fields()
    assert fields["repetition_time_excitation_inv2_s"] == 0.032


def test_part_real_mp2rage_is_refused_with_what_bids_expects(tmp_path):
    root = tmp_path / "b"
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    _json(root / "MP2RAGE.json", {**MP2RAGE_TOP})
    for n in (1, 2):
        for part in ("real", "imag"):
            _image(root / "sub-01" / "anat" / f"sub-01_inv-{n}_part-{part}_MP2RAGE.nii.gz")
            _json(root / "sub-01" / "anat" / f"sub-01_inv-{n}_part-{part}_MP2RAGE.json",
                  {"FlipAngle": 4 + n, "InversionTime": n})
    with pytest.raises(InputError, match="part-(real|imag) MP2RAGE images are not supported"):
        collect_plan(load_layout(root), "01")


# ------------------------------------------------------------------ vendor exports
def test_sub_underscore_folders_get_a_bids_naming_hint(tmp_path):
    root = tmp_path / "b"
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    _image(root / "sub_01" / "anat" / "sub_01_T1w.nii.gz")
    with pytest.raises(InputError, match=r"found sub_01: BIDS names participant folders "
                                         r"sub-<label>") as err:
        select_participants(load_layout(root), RunConfig(bids_dir=root))
    assert err.value.exit_code == EX_NOINPUT


def test_sub_underscore_export_is_refused_before_validation(tmp_path, caplog):
    from bids_agquant.cli.run import main

    root = tmp_path / "b"
    _json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.10.0"})
    _image(root / "sub_01" / "anat" / "sub_01_T1w.nii.gz")
    with caplog.at_level(logging.ERROR, logger="bids_agquant"):
        code = main([str(root), str(tmp_path / "out"), "participant", "-w",
                     str(tmp_path / "work")])
    assert code == EX_NOINPUT and "sub-<label>" in caplog.text
    assert not (tmp_path / "out").exists()


def test_four_d_complex_and_stacked_mp2rage_exports_say_what_bids_expects(tmp_path):
    stacked = tmp_path / "stacked.nii.gz"
    _image(stacked, np.ones((4, 4, 4, 2), np.float32))
    with pytest.raises(InputError, match=r"2 volumes in one file.*inv-1_part-mag_MP2RAGE"):
        load_volume(stacked, "MP2RAGE")
    complex_file = tmp_path / "complex.nii.gz"
    _image(complex_file, (np.ones((4, 4, 4)) * (1 + 1j)).astype(np.complex64))
    with pytest.raises(InputError, match="complex numbers.*part-mag and part-phase"):
        load_volume(complex_file, "MP2RAGE")


# ------------------------------------------------------------------ field-of-view edges
def test_a_six_slice_slab_keeps_every_voxel():
    """A phantom filling a 6-slice slab: the signal mask (the fit mask) keeps its edge
    slices, and every voxel's T1 is fitted."""
    from bids_agquant.qmri.masks import fit_mask, signal_mask
    from bids_agquant.qmri.vfa import fit_vfa, spgr_signal

    shape, flips, tr = (14, 20, 6), [2.0, 5.0, 10.0, 15.0], 0.015
    t1 = np.full(shape, 1.2)
    rng = np.random.default_rng(4)
    signals = np.stack([spgr_signal(1000.0, t1, f, tr) for f in flips], axis=-1)
    signals = signals * (1 + 0.002 * rng.standard_normal(signals.shape))
    mask = fit_mask(signals.mean(axis=-1))
    assert mask.all() and signal_mask(signals[..., -1]).all()
    fit = fit_vfa(signals, flips, tr, mask=mask)
    assert fit.valid.all()
    assert np.allclose(fit.t1_s, 1.2, rtol=0.03)


def test_edge_padding_does_not_grow_a_head_into_the_background():
    from bids_agquant.qmri.masks import signal_mask

    z, y, x = np.mgrid[:30, :30, :30]
    head = ((x - 15) ** 2 + (y - 15) ** 2 + (z - 15) ** 2) < 12 ** 2
    image = np.where(head, 100.0, 0.0) + np.random.default_rng(1).normal(0, 1, head.shape)
    assert np.array_equal(signal_mask(image), head)
    # A head cut by the top slice keeps the voxels of that slice.
    cut = image[:, :, :20]
    assert np.array_equal(signal_mask(cut)[:, :, -1], head[:, :, 19])


def test_b1_field_source_links_the_images_to_their_b1_map(tmp_path):
    root = _vfa_dataset(tmp_path / "b", fmap={
        "TB1map": {"Units": "percent", "B1FieldIdentifier": "other"},
        "acq-anat_TB1TFL": {"B1FieldIdentifier": "tfl"},
        "acq-famp_TB1TFL": {"FlipAngle": 80, "B1FieldIdentifier": "tfl"}})
    for n in (1, 2):
        side = root / "sub-01" / "ses-D0" / "anat" / f"sub-01_ses-D0_flip-{n}_VFA.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), "B1FieldSource": "tfl"}))
    assert _plan(root).baseline.b1.suffix == "TB1TFL"
