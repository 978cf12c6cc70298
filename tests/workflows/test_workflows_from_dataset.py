"""Workflow construction (no execution) for the plans a dataset can produce."""

from __future__ import annotations

from bids_agquant.config import RunConfig, resolve_agent
from bids_agquant.plan import collect_plan, load_layout
from bids_agquant.workflows.base import init_participant_wf


def _nodes(workflow) -> set[str]:
    return set(workflow.list_node_names())


def _config(tmp_path, dro):
    return RunConfig(dro.bids_dir, tmp_path / "out", "participant", tmp_path / "work",
                     contours_dir=dro.contours_dir)


def _workflow(plan, config):
    plan.agent_parameters = resolve_agent("aguix")
    return init_participant_wf(plan, config)


def test_full_plan_wires_every_timepoint(dro2mm, tmp_path):
    plan = collect_plan(load_layout(dro2mm.bids_dir), "01", contours_dir=dro2mm.contours_dir)
    names = _nodes(_workflow(plan, _config(tmp_path, dro2mm)))
    # sub-01 has VFA and MP2RAGE at every session: both methods all the way to lesion tables.
    for method in ("vfa", "mp2rage"):
        for tp in ("D0", "D1", "D8"):
            assert f"{method}_t1map_{tp}_wf.fit_{method}" in names
            assert f"reg_{method}_{tp}_wf.register" in names
        for tp in ("D1", "D8"):
            uptake = f"uptake_{method}_{tp}_wf"
            for node in ("uptake", "lesion_table", f"ds_gdconc_{method}_{tp}",
                         f"ds_lesions_{method}_{tp}"):
                assert f"{uptake}.{node}" in names
    for tp in ("D1", "D8"):
        for node in (f"reg_{tp}_to_ref_wf.register", f"contours_{tp}_wf.contours_to_session",
                     f"ds_enhancement_{tp}"):
            assert node in names
    assert {"persistence_vfa_D8", "persistence_mp2rage_D8"} <= names  # D8 against D1
    assert not any(name.startswith("persistence") and "D1" in name for name in names)


def test_same_session_pre_post_plan(dro2mm, tmp_path):
    plan = collect_plan(load_layout(dro2mm.bids_dir), "02", contours_dir=dro2mm.contours_dir)
    assert plan.baseline.methods == ["mp2rage"]
    assert [tp.label for tp in plan.posts] == ["ses-D0_ce-AGuIX"]
    assert plan.posts[0].hours_post_injection == 2.0
    assert plan.baseline.mp2rage.uni_source == "complex"
    assert plan.baseline.mp2rage.phase_units == "arbitrary"  # Siemens integer scale
    names = _nodes(_workflow(plan, _config(tmp_path, dro2mm)))
    assert {"mp2rage_t1map_D0_wf.fit_mp2rage", "mp2rage_t1map_D0ceAGuIX_wf.fit_mp2rage",
            "reg_D0ceAGuIX_to_ref_wf.register", "uptake_mp2rage_D0ceAGuIX_wf.uptake",
            "uptake_mp2rage_D0ceAGuIX_wf.lesion_table"} <= names
    assert not any("vfa" in name for name in names)


def test_plan_without_contours_writes_maps_but_no_tables(dro2mm, tmp_path):
    plan = collect_plan(load_layout(dro2mm.bids_dir), "01", contours_dir=tmp_path / "none")
    assert plan.contours is None
    assert any("no GTV contours" in note for note in plan.notes)
    names = _nodes(_workflow(plan, _config(tmp_path, dro2mm)))
    assert "uptake_vfa_D1_wf.ds_gdconc_vfa_D1" in names
    assert not any(name.endswith("lesion_table") for name in names)


def test_baseline_only_participant_still_gets_t1_maps(dro2mm, tmp_path):
    plan = collect_plan(load_layout(dro2mm.bids_dir), "01", session_labels=["nonexistent"],
                        contours_dir=dro2mm.contours_dir)
    assert plan.posts == []
    assert any("nothing to compare" in note for note in plan.notes)
    names = _nodes(_workflow(plan, _config(tmp_path, dro2mm)))
    assert {"ds_t1map_vfa_D0", "ds_r1map_vfa_D0", "ds_r1map_ref_vfa_D0",
            "ds_t1map_mp2rage_D0", "ds_r1map_ref_mp2rage_D0"} <= names
    assert not any(name.startswith("uptake") for name in names)
