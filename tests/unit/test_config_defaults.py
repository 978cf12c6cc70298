"""Every default lives once, in RunConfig: the command line presents the same values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bids_agquant.cli.parser import build_parser, parse_args
from bids_agquant.cli.run import _config_from_opts
from bids_agquant.config import RunConfig, resolve_participant_agent

#: RunConfig field ← parser destination, where the names differ.
PARSER_NAMES = {"contours_dir": "contours", "reference_dose_mg_per_kg": "reference_dose",
                "report_mass_max_mg_per_l": "report_mass_max"}
#: Fields that are not command-line options (filled in by the run).
NOT_OPTIONS = {"bids_dir", "output_dir", "analysis_level", "run_uuid", "field_strength_T"}


def test_cli_defaults_are_runconfig_defaults():
    defaults = RunConfig()
    parser = build_parser()
    for field in dataclasses.fields(RunConfig):
        if field.name in NOT_OPTIONS:
            continue
        dest = PARSER_NAMES.get(field.name, field.name)
        expected = getattr(defaults, field.name)
        if field.name == "contours_dir":
            expected = None  # the parser's None means "BIDS_DIR/derivatives/contours"
        assert parser.get_default(dest) == expected, field.name


def test_a_run_config_from_default_options_equals_runconfig_defaults(tmp_path):
    opts = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant"])
    config = _config_from_opts(opts)
    defaults = RunConfig(bids_dir=config.bids_dir, output_dir=config.output_dir,
                         work_dir=config.work_dir, run_uuid=config.run_uuid)
    assert config == defaults
    assert config.contours_dir == (tmp_path / "bids" / "derivatives" / "contours").absolute()
    assert config.work_dir == Path("work").absolute()


def test_run_config_toml_round_trip(tmp_path):
    config = RunConfig(tmp_path / "bids", tmp_path / "out", "participant", tmp_path / "w",
                       participant_label=["01"], plugin_args={"n_procs": 2}, r1=7.1,
                       run_uuid="20261202-000000_abcdef01")
    assert RunConfig.from_toml(config.to_toml()) == config


def test_participant_agent_rules():
    config = RunConfig()
    assert resolve_participant_agent("AGuIX", False, config, 3.0).name == "aguix-nanorad"
    assert resolve_participant_agent("gadoterate", False, config, 1.5).r1_per_mM_per_s == 3.6
    # placebo and unknown participants are analysed like the trial's default agent
    assert resolve_participant_agent("placebo", True, config, 3.0).name == "aguix-nanorad"
    assert resolve_participant_agent(None, False, config, 3.0).name == "aguix-nanorad"
    custom = dataclasses.replace(config, r1=7.3)
    assert resolve_participant_agent(None, False, custom, 3.0).name == "custom"
    forced = dataclasses.replace(config, agent="aguix-mp2rage")
    assert resolve_participant_agent("gadoterate", False, forced, 3.0).gd_per_particle == 15
