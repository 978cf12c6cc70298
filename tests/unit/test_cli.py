"""Command line: arguments, plan, exit codes and messages on bad input (no workflow run)."""

from __future__ import annotations

import json
import shutil

import pytest

from bids_agquant.cli.parser import parse_args
from bids_agquant.cli.run import main
from bids_agquant.config import RunConfig, resolve_agent
from bids_agquant.plan import collect_plan, load_layout
from bids_agquant.validation import find_validator


def _copy_raw(dro, tmp_path):
    """A private copy of the reference raw dataset (with its contours) that a test may break."""
    dest = tmp_path / "bids"
    shutil.copytree(dro.bids_dir, dest)
    return dest


def test_labels_strip_prefixes_and_aliases():
    opts = parse_args(["/b", "/o", "participant", "--participant_label", "sub-01", "02",
                       "--session-label", "ses-D1", "--baseline-session", "ses-D0"])
    assert opts.participant_label == ["01", "02"]
    assert opts.session_label == ["D1"]
    assert opts.baseline_session == "D0"


def test_usage_error_exits_64(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["/b", "/o", "everything"])
    assert exc.value.code == 64


def test_run_config_toml_round_trip(tmp_path):
    config = RunConfig(tmp_path / "b", tmp_path / "o", "participant", tmp_path / "w",
                       participant_label=["01"], plugin_args={"n_procs": 2}, r1=6.7)
    assert RunConfig.from_toml(config.to_toml()) == config


def test_agent_presets():
    assert resolve_agent("AGuIX").r1_per_mM_per_s == 8.9
    mp2rage = resolve_agent("aguix-mp2rage")
    assert mp2rage.mg_per_L_per_mM == pytest.approx(4000 / 3)
    assert resolve_agent("dotarem", field_strength_T=1.5).r1_per_mM_per_s == 3.6
    assert resolve_agent("aguix", r1=7.0).r1_per_mM_per_s == 7.0
    with pytest.raises(ValueError, match="unknown agent"):
        resolve_agent("unobtainium")
    with pytest.raises(ValueError, match="no relaxivity at 7 T"):
        resolve_agent("aguix", field_strength_T=7.0)


def test_plan_of_reference_dataset(dro2mm):
    layout = load_layout(dro2mm.bids_dir)
    plan = collect_plan(layout, "01", contours_dir=dro2mm.contours_dir)
    assert plan.baseline.session == "D0"
    assert [tp.session for tp in plan.posts] == ["D1", "D8"]
    assert plan.baseline.vfa.flip_angles_deg == [2.0, 5.0, 10.0, 15.0]
    assert plan.baseline.vfa.repetition_time_s == pytest.approx(0.015)
    assert plan.baseline.b1.suffix == "TB1map" and plan.baseline.b1.units == "fraction"
    assert plan.contours is not None and plan.contours.session == "D0"
    assert plan.dose_mg_per_kg == 100.0
    assert plan.posts[0].hours_post_injection == pytest.approx(2.0)
    only_d8 = collect_plan(layout, "01", session_labels=["D8"], contours_dir=dro2mm.contours_dir)
    assert [tp.session for tp in only_d8.posts] == ["D8"]


def test_missing_bids_dir_exits_66(tmp_path, caplog):
    code = main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "participant"])
    assert code == 66
    assert "nowhere" in caplog.text
    assert not (tmp_path / "out").exists()


def test_output_inside_input_is_refused(dro2mm, tmp_path):
    bids = _copy_raw(dro2mm, tmp_path)
    code = main([str(bids), str(bids / "out"), "participant", "--skip-bids-validation"])
    assert code == 64
    assert not (bids / "out").exists()


def test_missing_t1_mapping_images_names_the_folder_and_exits_66(dro2mm, tmp_path, caplog):
    bids = _copy_raw(dro2mm, tmp_path)
    for f in (bids / "sub-03" / "ses-D0" / "anat").glob("*_VFA.*"):  # sub-03: VFA only
        f.unlink()
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "03",
                 "--skip-bids-validation", "-w", str(tmp_path / "work")])
    assert code == 66
    assert "sub-03/ses-D0/anat" in caplog.text and "VFA" in caplog.text
    assert "MP2RAGE" in caplog.text
    assert not out.exists()  # nothing half-written


def test_method_missing_at_baseline_is_dropped_with_a_warning(dro2mm, tmp_path, caplog):
    bids = _copy_raw(dro2mm, tmp_path)
    for f in (bids / "sub-01" / "ses-D0" / "anat").glob("*_VFA.*"):  # MP2RAGE remains
        f.unlink()
    plan = collect_plan(load_layout(bids), "01", contours_dir=bids / "derivatives" / "contours")
    assert plan.baseline.methods == ["mp2rage"]
    assert [plan.methods_for(tp) for tp in plan.posts] == [["mp2rage"], ["mp2rage"]]
    assert "vfa images have no baseline counterpart" in caplog.text


def test_missing_sidecar_key_names_file_and_key(dro2mm, tmp_path, caplog):
    bids = _copy_raw(dro2mm, tmp_path)
    sidecar = bids / "sub-01" / "ses-D1" / "anat" / "sub-01_ses-D1_flip-2_VFA.json"
    meta = json.loads(sidecar.read_text())
    meta.pop("FlipAngle")
    sidecar.write_text(json.dumps(meta))
    # also no inherited value anywhere above it
    for top in bids.glob("*VFA.json"):
        top_meta = json.loads(top.read_text())
        top_meta.pop("FlipAngle", None)
        top.write_text(json.dumps(top_meta))
    code = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "01",
                 "--skip-bids-validation", "-w", str(tmp_path / "work")])
    assert code == 66
    assert "sub-01_ses-D1_flip-2_VFA" in caplog.text and "FlipAngle" in caplog.text


def test_unknown_participant_exits_66(dro2mm, tmp_path, caplog):
    code = main([str(dro2mm.bids_dir), str(tmp_path / "out"), "participant",
                 "--participant-label", "99", "--skip-bids-validation"])
    assert code == 66
    assert "sub-99" in caplog.text


def test_invalid_bids_exits_16(dro2mm, tmp_path):
    if find_validator() is None:
        pytest.skip("bids-validator-deno is not installed (pip install '.[test]')")
    bids = _copy_raw(dro2mm, tmp_path)
    (bids / "dataset_description.json").write_text("{}")
    code = main([str(bids), str(tmp_path / "out"), "participant"])
    assert code == 16


def test_unwritable_output_exits_73(dro2mm, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main([str(dro2mm.bids_dir), str(blocker / "out"), "participant",
                 "--participant-label", "01", "--skip-bids-validation",
                 "-w", str(tmp_path / "work")])
    assert code == 73


@pytest.mark.parametrize(("value", "expected_s"), [
    (0.015, 0.015),        # seconds, as BIDS asks
    ("0.015", 0.015),      # a numeric string
    (15, 0.015),           # a plain number above 1 s for an excitation TR: milliseconds
    ("15 ms", 0.015),      # explicit unit
    ([0.015], 0.015),      # one-element list
])
def test_repetition_time_is_read_in_seconds(value, expected_s, tmp_path):
    from bids_agquant.sidecars import seconds as _seconds

    source = tmp_path / "x_VFA.json"
    assert _seconds(value, "RepetitionTimeExcitation", source,
                    max_plausible_s=1.0) == pytest.approx(expected_s)


@pytest.mark.parametrize("value", ["fast", None, [0.01, 0.02], -0.015, float("nan")])
def test_unreadable_repetition_time_exits_65(value, tmp_path):
    from bids_agquant.errors import EX_DATAERR, InputError
    from bids_agquant.sidecars import seconds as _seconds

    with pytest.raises(InputError) as exc:
        _seconds(value, "RepetitionTimeExcitation", tmp_path / "x_VFA.json", max_plausible_s=1.0)
    assert exc.value.exit_code == EX_DATAERR
    assert "x_VFA.json" in str(exc.value) and "RepetitionTimeExcitation" in str(exc.value)


def test_registration_pyramid_is_defined_in_millimetres():
    from bids_agquant.config import load_registration_parameters

    at_1mm = load_registration_parameters(False, 1.0)
    at_2mm = load_registration_parameters(False, 2.0)
    # same physical levels (8, 4, 2 mm) whatever the voxel size; smoothing sigmas are in mm
    assert at_1mm["aff_shrink_factors"] == (8, 4, 2)
    assert at_2mm["aff_shrink_factors"] == (4, 2, 1)
    assert at_1mm["aff_smoothing_sigmas"] == at_2mm["aff_smoothing_sigmas"] == (4.0, 2.0, 1.0)
    assert at_1mm["smoothing_in_mm"] is True
    assert load_registration_parameters(False, 3.0)["aff_shrink_factors"][-1] == 1  # never < 1
