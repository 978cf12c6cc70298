"""Uptake of one post-agent timepoint and T1 method: R1 into the reference space, ΔR1 →
mM Gd → mg/L, and the lesion tables."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import AgentParameters
from ..derivatives import bids_uri
from ..interfaces.lesions import LesionTable
from ..interfaces.qmri import ComputeUptake
from .common import RESAMPLING_R1, resample_node, resample_r1_node
from .outputs import UNITS, t1map_metadata

INPUT_FIELDS = ["session_xfm", "method_xfm", "r1map", "valid_mask", "r1_pre", "valid_pre",
                "enhancement", "labels_ref", "normal_mask"]


def init_uptake_wf(plan, config, sinks, timepoint, method: str, agent: AgentParameters, *,
                   with_lesions: bool, name: str):
    """ΔR1, Gd and mass concentration maps of ``timepoint`` and, with contours, its lesion,
    control and profile tables.

    R1 and its validity reach the reference grid through the composed transform: a point p
    of the reference maps to T_method(T_session(p)).

    Parameters
    ----------
    plan : ParticipantPlan
    config : RunConfig
    sinks : Sinks
        The participant's derivative sinks.
    timepoint : Timepoint
        A post-agent timepoint.
    method : str
        T1 method shared with the baseline (``"vfa"`` or ``"mp2rage"``).
    agent : AgentParameters
        Constants of this timepoint's agent (relaxivity at the plan's field strength).
    with_lesions : bool
        Contours exist: build the lesion tables.

    Inputs
    ------
    session_xfm : session T1w → baseline T1w transform.
    method_xfm : the method's images → session T1w transform.
    r1map, valid_mask : native R1 (1/s) and fit validity of this timepoint.
    r1_pre, valid_pre : baseline R1 and validity, reference grid.
    enhancement : SE % map, reference grid.
    labels_ref : lesion labels, reference grid (with lesions).
    normal_mask : normal-tissue mask, reference grid (with lesions).

    Outputs
    -------
    gd_conc, mass_conc, delta_r1 : the maps (mM, mg/L, 1/s), reference grid.
    lesions_tsv : the lesion table (with lesions).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["gd_conc", "mass_conc", "delta_r1", "lesions_tsv"]), name="outputnode")
    bids_dir = Path(config.bids_dir)
    base, tp = plan.baseline, timepoint
    ref_t1w = str(base.t1w)
    ref_uri = bids_uri(base.t1w, bids_dir)

    xfms = pe.Node(niu.Merge(2), name="xfms")
    r1_ref = resample_r1_node("r1_to_ref", reference=ref_t1w)
    valid_ref = resample_node("valid_to_ref", reference=ref_t1w, out_name="valid.nii.gz")
    uptake = pe.Node(ComputeUptake(
        r1_per_mM_per_s=agent.r1_per_mM_per_s,
        particle_molar_mass_g_per_mol=agent.particle_molar_mass_g_per_mol,
        gd_per_particle=agent.gd_per_particle), name="uptake", mem_gb=1.0)
    workflow.connect([
        (inputnode, xfms, [("session_xfm", "in1"), ("method_xfm", "in2")]),
        (inputnode, r1_ref, [("r1map", "input_image"), ("valid_mask", "valid_mask")]),
        (inputnode, valid_ref, [("valid_mask", "input_image")]),
        (xfms, r1_ref, [("out", "transforms")]),
        (xfms, valid_ref, [("out", "transforms")]),
        (r1_ref, uptake, [("output_image", "r1_post")]),
        (valid_ref, uptake, [("output_image", "valid_post")]),
        (inputnode, uptake, [("r1_pre", "r1_pre"), ("valid_pre", "valid_pre")]),
        (uptake, outputnode, [("gd_conc", "gd_conc"), ("mass_conc", "mass_conc"),
                              ("delta_r1", "delta_r1")]),
    ])

    data = tp.vfa.files + base.vfa.files if method == "vfa" else (
        tp.mp2rage.files + base.mp2rage.files)
    map_meta = {"Sources": [bids_uri(f, bids_dir) for f in data], "SpatialReference": ref_uri,
                "BaselineTimepoint": base.label, "T1Method": method,
                "EstimationAlgorithm": f"{method} T1 maps, resampled ({RESAMPLING_R1}) to the "
                                       "baseline T1w; C = (R1_post - R1_pre) / r1",
                "SkullStripped": False}
    agent_meta = agent.as_metadata()
    for field, kind, extra in (
        ("delta_r1", "deltaR1map", {}),
        ("gd_conc", "Gdconc", agent_meta),
        ("mass_conc", "massconc", {**agent_meta, "MassPerMillimolarGd": agent.mg_per_L_per_mM}),
    ):
        ds = sinks.node(kind, tp, method, metadata={**map_meta, **extra, "Units": UNITS[kind]})
        workflow.connect(uptake, field, ds, "in_file")
    ds_r1 = sinks.node("R1map_ref", tp, method,
                       metadata={**t1map_metadata(plan, tp, method, bids_dir, config),
                                 "Units": "1/s", "SpatialReference": ref_uri,
                                 "Resampling": RESAMPLING_R1})
    workflow.connect(r1_ref, "output_image", ds_r1, "in_file")
    if not with_lesions:
        return workflow

    table = pe.Node(LesionTable(timepoint=tp.label, t1_method=method,
                                measurable_threshold_mm=config.measurable_threshold_mm,
                                hours_post_injection=tp.hours_post_injection,
                                dose_mg_per_kg=plan.dose_mg_per_kg, weight_kg=plan.weight_kg),
                    name="lesion_table")
    if plan.contours.names_tsv is not None:
        table.inputs.names_tsv = str(plan.contours.names_tsv)
    workflow.connect([
        (inputnode, table, [("labels_ref", "labels"), ("enhancement", "enhancement"),
                            ("normal_mask", "normal_mask")]),
        (uptake, table, [("gd_conc", "gd_conc"), ("mass_conc", "mass_conc"),
                         ("delta_r1", "delta_r1"), ("t1_pre", "t1_pre"), ("t1_post", "t1_post"),
                         ("r1_per_mM_per_s", "r1_per_mM_per_s")]),
        (table, outputnode, [("out_tsv", "lesions_tsv")]),
    ])
    for kind, tsv, sidecar in (("lesions", "out_tsv", "out_json"),
                               ("controls", "controls_tsv", "controls_json"),
                               ("profiles", "profiles_tsv", "profiles_json")):
        ds = sinks.node(kind, tp, method)
        workflow.connect([(table, ds, [(tsv, "in_file"), (sidecar, "sidecar_file")])])
    return workflow
