"""Workflow construction from small hand-made plans (empty placeholder files, no image data):
the graph wires what the plan asks for, and the sinks are exactly the output contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import networkx as nx
import pytest

from bids_agquant.config import RunConfig, resolve_agent
from bids_agquant.derivatives import expected_outputs
from bids_agquant.interfaces.bids import DerivativesSink
from bids_agquant.plan import Contours, MP2RAGESet, ParticipantPlan, Timepoint, VFASet
from bids_agquant.workflows.base import init_participant_wf


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _timepoint(root: Path, session: str | None, ce: str | None = None, *, vfa=True,
               mp2rage=True, t1w=True, hours=None) -> Timepoint:
    folder = root / "sub-01" / (f"ses-{session}" if session else "") / "anat"
    stem = "sub-01" + (f"_ses-{session}" if session else "") + (f"_ce-{ce}" if ce else "")
    vfa_set = VFASet([_touch(folder / f"{stem}_flip-{i}_VFA.nii.gz") for i in (1, 2)],
                     [3.0, 20.0], 0.015) if vfa else None
    mp2_set = None
    if mp2rage:
        mp2_set = MP2RAGESet(
            inv1=_touch(folder / f"{stem}_inv-1_MP2RAGE.nii.gz"),
            inv2=_touch(folder / f"{stem}_inv-2_MP2RAGE.nii.gz"), inv1_phase=None,
            inv2_phase=None, unit1=None, repetition_time_preparation_s=5.0,
            repetition_time_excitation_s=0.0068, inversion_times_s=(0.7, 2.5),
            flip_angles_deg=(4.0, 5.0), number_shots=(88, 88))
    return Timepoint(session, ce, _touch(folder / f"{stem}_T1w.nii.gz") if t1w else None,
                     vfa_set, hours_post_injection=hours, mp2rage=mp2_set)


def _plan(root: Path, *, contours_on: str | None = "D0") -> ParticipantPlan:
    base = _timepoint(root, "D0")
    posts = [_timepoint(root, "D1", hours=2.0), _timepoint(root, "D8", mp2rage=False, hours=168.0),
             _timepoint(root, "D0", "gadoterate", mp2rage=False, hours=0.25)]
    contours = None
    if contours_on:
        file = _touch(root / "derivatives" / "contours" / "sub-01" / f"ses-{contours_on}"
                      / "anat" / f"sub-01_ses-{contours_on}_desc-GTV_dseg.nii.gz")
        contours = Contours(file, contours_on, None, "dseg")
    plan = ParticipantPlan("01", base, posts, contours, agent="AGuIX", dose_mg_per_kg=100.0,
                           weight_kg=70.0)
    plan.agent_parameters = resolve_agent("aguix-nanorad")
    return plan


def _config(root: Path) -> RunConfig:
    return RunConfig(root, root.parent / "out", "participant", root.parent / "work")


def _sinks(workflow) -> dict[str, dict]:
    """Full node name → entities of every DerivativesSink in the (flattened) graph."""
    return {node.fullname: dict(node.inputs.entities)
            for node in workflow._get_all_nodes()
            if isinstance(node.interface, DerivativesSink)}


def _names(output) -> dict:
    return {k: v for k, v in output.entity_dict.items() if k != "mode"}


@pytest.mark.parametrize("contours_on", ["D0", "D1", None])
def test_sinks_are_exactly_the_output_contract(tmp_path, contours_on):
    root = tmp_path / "bids"
    plan = _plan(root, contours_on=contours_on)
    config = _config(root)
    workflow = init_participant_wf(plan, config)
    assert nx.is_directed_acyclic_graph(workflow._create_flat_graph())
    sinks = sorted(sorted({k: v for k, v in e.items() if k != "mode"}.items())
                   for e in _sinks(workflow).values())
    contract = sorted(sorted(_names(o).items()) for o in expected_outputs(plan, config))
    assert sinks == contract
    paths = [o.relpath for o in expected_outputs(plan, config)]
    assert len(paths) == len(set(paths))
    # what the plan implies, spelled out once here as a check of the contract itself
    assert "sub-01/ses-D8/anat/sub-01_ses-D8_space-D0_desc-vfa_Gdconc.nii.gz" in paths
    assert not any("ses-D8" in p and "mp2rage" in p for p in paths)
    assert "sub-01/ses-D0/anat/sub-01_ses-D0_ce-gadoterate_space-D0_desc-vfa_massconc.nii.gz" \
        in paths
    if contours_on:
        assert "sub-01/ses-D1/anat/sub-01_ses-D1_desc-mp2rage_lesions.tsv" in paths
        # persistence within the participant's agent only: D8 against D1 (gadoterate apart)
        persistence = [p for p in paths if p.endswith("_persistence.tsv")]
        assert persistence == ["sub-01/ses-D8/anat/sub-01_ses-D8_desc-vfa_persistence.tsv"]
    else:
        assert not any(p.endswith(("_lesions.tsv", "_dseg.nii.gz")) for p in paths)


def test_contours_drawn_on_a_post_session_follow_its_registration(tmp_path):
    workflow = init_participant_wf(_plan(tmp_path / "bids", contours_on="D1"),
                                   _config(tmp_path / "bids"))
    graph = workflow._create_flat_graph()
    to_ref = next(n for n in graph.nodes if n.name == "contours_to_ref")
    upstream = {u.name for u in nx.ancestors(graph, to_ref)}
    assert {"prepare_contours", "session_xfm_D1"} <= upstream
    assert "session_xfm_D8" not in upstream
    assert to_ref.inputs.invert == [False]
    mask = next(n for n in graph.nodes if n.name == "ref_registration_mask")
    assert not list(graph.in_edges(mask))  # no cycle through the D1 registration


def test_contours_drawn_on_the_baseline_are_cut_out_of_the_registration_metric(tmp_path):
    workflow = init_participant_wf(_plan(tmp_path / "bids"), _config(tmp_path / "bids"))
    graph = workflow._create_flat_graph()
    to_ref = next(n for n in graph.nodes if n.name == "contours_to_ref")
    assert {u.name for u in nx.ancestors(graph, to_ref)} == {"prepare_contours"}
    mask = next(n for n in graph.nodes if n.name == "ref_registration_mask")
    assert "contours_to_ref" in {u.name for u in nx.ancestors(graph, mask)}


def test_each_timepoint_gets_its_own_agent_constants(tmp_path):
    workflow = init_participant_wf(_plan(tmp_path / "bids"), _config(tmp_path / "bids"))
    uptake = {node.fullname.split(".")[-2]: node for node in workflow._get_all_nodes()
              if node.name == "uptake"}
    assert uptake["uptake_vfa_D1_wf"].inputs.r1_per_mM_per_s == 8.9
    assert uptake["uptake_vfa_D0cegadoterate_wf"].inputs.r1_per_mM_per_s == 3.5
    assert uptake["uptake_vfa_D0cegadoterate_wf"].inputs.gd_per_particle == 1.0


def test_plain_t1_mapping_plan_writes_only_native_maps(tmp_path):
    root = tmp_path / "bids"
    base = _timepoint(root, None, t1w=False)
    plan = ParticipantPlan("01", base, [], None)
    workflow = init_participant_wf(plan, _config(root))
    sinks = _sinks(workflow)
    assert {e["suffix"] for e in sinks.values()} == {"T1map", "R1map"}
    assert len(sinks) == 4  # VFA and MP2RAGE
    assert not any(".reg_" in name for name in sinks)


def test_baseline_only_plan_with_a_t1w_builds_no_registration_to_the_reference(tmp_path):
    plan = _plan(tmp_path / "bids")
    plan.posts = []
    workflow = init_participant_wf(plan, _config(tmp_path / "bids"))
    names = set(workflow.list_node_names())
    assert not any(name.startswith(("ref_registration_mask", "enhancement")) for name in names)
    sinks = sorted(sorted(e.items()) for e in _sinks(workflow).values())
    contract = sorted(sorted(o.entity_dict.items()) for o in expected_outputs(plan, _config(
        tmp_path / "bids")))
    assert sinks == contract


def test_a_sink_outside_the_contract_is_refused(tmp_path):
    from bids_agquant.workflows.outputs import Sinks

    plan = _plan(tmp_path / "bids", contours_on=None)
    sinks = Sinks(plan, _config(tmp_path / "bids"))
    with pytest.raises(KeyError, match="not in the output contract"):
        sinks.node("lesions", plan.posts[0], "vfa")


def test_plan_json_round_trip(tmp_path):
    plan = _plan(tmp_path / "bids", contours_on="D1")
    plan.notes.append("a note")
    again = ParticipantPlan.from_json(plan.to_json())
    assert again == plan
    assert isinstance(again.baseline.mp2rage.inversion_times_s, tuple)
    assert isinstance(again.posts[0].t1w, Path)
    assert dataclasses.asdict(again.agent_parameters) == dataclasses.asdict(
        plan.agent_parameters)
    assert again.timepoint_for_node("sub_01_wf.uptake_vfa_D8_wf.uptake").label == "ses-D8"
    assert again.timepoint_for_node("sub_01_wf.contours_wf.prepare_contours") is None
    assert again.timepoint_for_node(
        "bids_agquant_0_1_wf.sub_01_wf.reg_D0cegadoterate_to_ref_wf.register").label == \
        "ses-D0_ce-gadoterate"
