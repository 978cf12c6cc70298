"""Top-level workflows: the whole run, and one participant.

Data flow (DESIGN.md §2): per timepoint and T1 method (VFA, MP2RAGE) a native-space T1 fit
and a registration of the method's images to the session T1w;
per post-agent timepoint a T1w → baseline T1w registration (lesions masked out of the metric);
R1 maps resampled into the reference (baseline T1w) space; ΔR1 → mM Gd → mg/L; SE % on the
T1w; contours into reference and native spaces; one lesion table per post-agent timepoint.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import RunConfig, agent_for_timepoint
from ..derivatives import METHOD_KIND, bids_uri, persistence_pairs, run_log_dir
from ..interfaces.lesions import Persistence
from ..interfaces.qmri import SignalEnhancement, SignalMask
from ..interfaces.reports import RegistrationQuality
from ..plan import ParticipantPlan
from .b1 import init_b1_wf
from .common import RESAMPLING_R1, resample_node, resample_r1_node
from .contours import contour_timepoint, init_contours_wf, init_session_contours_wf
from .outputs import UNITS, Sinks, t1map_metadata
from .registration import init_rigid_registration_wf
from .t1map import init_t1map_wf
from .uptake import init_uptake_wf

LOGGER = logging.getLogger("bids_agquant")


def init_bids_agquant_wf(config: RunConfig, plans: list[ParticipantPlan]):
    """Root workflow: one sub-workflow per participant, run in ``config.work_dir``."""
    from .. import __version__

    major_minor = "_".join(__version__.split(".")[:2]).replace("+", "_")
    workflow = pe.Workflow(name=f"bids_agquant_{major_minor}_wf", base_dir=str(config.work_dir))
    for plan in plans:
        participant_wf = init_participant_wf(plan, config)
        crash_dir = run_log_dir(config.output_dir, plan.subject, config.run_uuid)
        participant_wf.config["execution"]["crashdump_dir"] = str(crash_dir)
        for node in participant_wf._get_all_nodes():
            node.config = deepcopy(participant_wf.config)
        workflow.add_nodes([participant_wf])
    return workflow


def init_participant_wf(plan: ParticipantPlan, config: RunConfig):
    """Uptake workflow of one participant.

    Every timepoint gets a native-space T1/R1 map per T1 method it has (``desc-vfa``,
    ``desc-mp2rage``). Without a baseline T1w (plain T1 mapping) that is all. Otherwise each
    method's images are registered to their session's T1w, and every post-agent timepoint gets
    uptake maps and lesion tables for each method it shares with the baseline.

    Parameters
    ----------
    plan : ParticipantPlan
        Images, parameters and contours resolved from the BIDS dataset, with the
        participant's agent (``agent_parameters``) when it has post-agent timepoints; a
        ``ce-<label>`` naming another preset overrides it for that timepoint
        (:func:`bids_agquant.config.agent_for_timepoint`).
    config : RunConfig
        Run options (seed, threads, sloppy, output directory, thresholds, fit options).
    """
    workflow = pe.Workflow(name=f"sub_{plan.subject}_wf")
    sinks = Sinks(plan, config)
    bids_dir = Path(config.bids_dir)
    base = plan.baseline
    reg_kw = {"seed": config.random_seed, "omp_nthreads": config.omp_nthreads,
              "sloppy": config.sloppy}

    # ---------------------------------------------------------------- T1 maps, native space
    b1_wfs = {}  # one B1+ map per session, shared by its timepoints
    t1map_wfs, method_regs = {}, {}
    for tp in plan.timepoints:
        if tp.b1 is not None and tp.session not in b1_wfs:
            b1_wfs[tp.session] = init_b1_wf(plan, config, sinks, tp,
                                            name=f"b1_{tp.node_suffix}_wf")
        for method in tp.methods:
            key = (tp.label, method)
            t1_wf = init_t1map_wf(tp, method, vfa_fit=config.vfa_fit,
                                  inversion_efficiency=config.inversion_efficiency,
                                  name=f"{method}_t1map_{tp.node_suffix}_wf")
            t1map_wfs[key] = t1_wf
            if tp.b1 is not None:
                workflow.connect(b1_wfs[tp.session], "outputnode.b1_map",
                                 t1_wf, "inputnode.b1_map")
            meta = t1map_metadata(plan, tp, method, bids_dir, config)
            for field, kind in (("t1map", "T1map"), ("r1map", "R1map")):
                ds = sinks.node(kind, tp, method, metadata={**meta, "Units": UNITS[kind]})
                workflow.connect(t1_wf, f"outputnode.{field}", ds, "in_file")
            if tp.t1w is None:
                continue  # plain T1 mapping: no anatomical reference to register to
            # The T1-mapping images and the T1w are separate acquisitions: the head may move.
            reg = init_rigid_registration_wf(fixed_image=str(tp.t1w),
                                             name=f"reg_{method}_{tp.node_suffix}_wf", **reg_kw)
            workflow.connect(t1_wf, "outputnode.reference_image", reg, "inputnode.moving_image")
            method_regs[key] = reg
            ds_xfm = sinks.node("xfm_method", tp, method, metadata={
                "From": METHOD_KIND[method], "To": "T1w", "Type": "rigid (ANTs)",
                "Sources": meta["Sources"][:1] + [bids_uri(tp.t1w, bids_dir)]})
            workflow.connect([(reg, ds_xfm, [("outputnode.transform", "in_file"),
                                             (("outputnode.parameters", _as_metadata),
                                              "extra_metadata")])])

    if base.t1w is None:
        return workflow
    ref_t1w = str(base.t1w)
    ref_uri = bids_uri(base.t1w, bids_dir)

    # ---------------------------------------------------------------- baseline into reference
    r1_base_ref, valid_base_ref = {}, {}
    for method in base.methods:
        key = (base.label, method)
        base_xfm = pe.Node(niu.Merge(1), name=f"base_{method}_xfm")
        workflow.connect(method_regs[key], "outputnode.transform", base_xfm, "in1")
        r1_node = resample_r1_node(f"r1_{method}_base_to_ref", reference=ref_t1w)
        valid_node = resample_node(f"valid_{method}_base_to_ref", reference=ref_t1w,
                                   out_name="valid.nii.gz")
        for node, field in ((r1_node, "r1map"), (valid_node, "valid_mask")):
            workflow.connect([
                (t1map_wfs[key], node, [(f"outputnode.{field}", "input_image")]),
                (base_xfm, node, [("out", "transforms")]),
            ])
        workflow.connect(t1map_wfs[key], "outputnode.valid_mask", r1_node, "valid_mask")
        r1_base_ref[method], valid_base_ref[method] = r1_node, valid_node
        ds_r1_base = sinks.node("R1map_ref", base, method, metadata={
            **t1map_metadata(plan, base, method, bids_dir, config), "Units": "1/s",
            "SpatialReference": ref_uri, "Resampling": RESAMPLING_R1})
        workflow.connect(r1_node, "output_image", ds_r1_base, "in_file")

    # ---------------------------------------------------------------- contours, metric mask
    contours_wf = None
    if plan.contours is not None:
        contours_wf = init_contours_wf(plan, config, sinks)
        workflow.add_nodes([contours_wf])  # its baseline sink runs even with nothing to compare
    if not plan.posts:
        return workflow  # baseline T1/R1 maps (and its contours) only: nothing to compare
    ref_mask = pe.Node(SignalMask(in_file=ref_t1w), name="ref_registration_mask")
    if contours_wf is not None and contour_timepoint(plan) is None:
        # Lesions drawn on the baseline are cut out of the registration metric; contours drawn
        # on a post-agent timepoint need its registration first (a cycle otherwise).
        workflow.connect(contours_wf, "outputnode.labels_ref", ref_mask, "exclude_labels")

    # ---------------------------------------------------------------- post-agent timepoints
    field_T = plan.field_strength_T(config.field_strength_T)
    uptake_wfs = {}
    for tp in plan.posts:
        suffix = tp.node_suffix
        tp_reg = init_rigid_registration_wf(fixed_image=ref_t1w, moving_image=str(tp.t1w),
                                            name=f"reg_{suffix}_to_ref_wf", **reg_kw)
        workflow.connect(ref_mask, "out_mask", tp_reg, "inputnode.fixed_mask")
        ds_xfm = sinks.node("xfm_session", tp, metadata={
            "From": "orig", "To": plan.reference_label, "Type": "rigid (ANTs)",
            "Sources": [bids_uri(tp.t1w, bids_dir), ref_uri]})
        workflow.connect([(tp_reg, ds_xfm, [("outputnode.transform", "in_file"),
                                            (("outputnode.parameters", _as_metadata),
                                             "extra_metadata")])])

        session_xfm = pe.Node(niu.Merge(1), name=f"session_xfm_{suffix}")
        workflow.connect(tp_reg, "outputnode.transform", session_xfm, "in1")
        t1w_ref = resample_node(f"t1w_{suffix}_to_ref", reference=ref_t1w,
                                input_image=str(tp.t1w), out_name="t1w.nii.gz")
        workflow.connect(session_xfm, "out", t1w_ref, "transforms")
        _connect_registration_qc(workflow, plan, config, sinks, tp, t1w_ref=t1w_ref,
                                 ref_mask=ref_mask, contours_wf=contours_wf)
        enhancement = pe.Node(SignalEnhancement(pre=ref_t1w), name=f"enhancement_{suffix}")
        workflow.connect(t1w_ref, "output_image", enhancement, "post")
        ds_se = sinks.node("enhancement", tp, metadata={
            "Sources": [bids_uri(tp.t1w, bids_dir), ref_uri], "SpatialReference": ref_uri,
            "Units": "%", "Description": "100 (S_post - S_pre) / S_pre on the T1w GRE",
            "SkullStripped": False})
        workflow.connect(enhancement, "enhancement", ds_se, "in_file")
        if contours_wf is not None:
            if contour_timepoint(plan) is tp:
                workflow.connect(session_xfm, "out", contours_wf, "inputnode.session_xfm")
            session_contours = init_session_contours_wf(plan, config, sinks, tp,
                                                        name=f"contours_{suffix}_wf")
            workflow.connect([
                (contours_wf, session_contours, [("outputnode.labels_ref",
                                                  "inputnode.labels_ref")]),
                (session_xfm, session_contours, [("out", "inputnode.session_xfm")]),
            ])

        tp_agent, agent_decision = agent_for_timepoint(tp.ceagent, plan.agent_parameters,
                                                       field_T)
        LOGGER.info("sub-%s %s: %s", plan.subject, tp.label, agent_decision)
        for method in plan.methods_for(tp):
            uptake_wf = init_uptake_wf(plan, config, sinks, tp, method, tp_agent,
                                       with_lesions=contours_wf is not None,
                                       name=f"uptake_{method}_{suffix}_wf")
            uptake_wfs[(tp.label, method)] = uptake_wf
            t1_wf = t1map_wfs[(tp.label, method)]
            workflow.connect([
                (tp_reg, uptake_wf, [("outputnode.transform", "inputnode.session_xfm")]),
                (method_regs[(tp.label, method)], uptake_wf,
                 [("outputnode.transform", "inputnode.method_xfm")]),
                (t1_wf, uptake_wf, [("outputnode.r1map", "inputnode.r1map"),
                                    ("outputnode.valid_mask", "inputnode.valid_mask")]),
                (r1_base_ref[method], uptake_wf, [("output_image", "inputnode.r1_pre")]),
                (valid_base_ref[method], uptake_wf, [("output_image", "inputnode.valid_pre")]),
                (enhancement, uptake_wf, [("enhancement", "inputnode.enhancement")]),
                (ref_mask, uptake_wf, [("out_mask", "inputnode.normal_mask")]),
            ])
            if contours_wf is not None:
                workflow.connect(contours_wf, "outputnode.labels_ref",
                                 uptake_wf, "inputnode.labels_ref")
    if contours_wf is not None:
        _connect_persistence(workflow, plan, config, sinks, uptake_wfs)
    return workflow


def _as_metadata(parameters: dict) -> dict:
    """Sidecar field recording the registration parameters that were used."""
    return {"RegistrationParameters": parameters}


def _connect_registration_qc(workflow, plan, config, sinks, tp, *, t1w_ref, ref_mask,
                             contours_wf):
    """The session T1w in reference space (``space-<ref>_desc-preproc_T1w``) for the report's
    registration check, with its similarity to the baseline T1w in the sidecar
    (``RegistrationQuality``: correlation and NMI, head without lesions, before and after)."""
    bids_dir = Path(config.bids_dir)
    base = plan.baseline
    ref_uri = bids_uri(base.t1w, bids_dir)
    quality = pe.Node(RegistrationQuality(fixed_image=str(base.t1w), moving_image=str(tp.t1w)),
                      name=f"registration_quality_{tp.node_suffix}", mem_gb=0.5)
    workflow.connect([
        (t1w_ref, quality, [("output_image", "registered_image")]),
        (ref_mask, quality, [("out_mask", "mask")]),
    ])
    if contours_wf is not None:
        workflow.connect(contours_wf, "outputnode.labels_ref", quality, "exclude_labels")
    ds_t1w = sinks.node("preproc_T1w", tp, metadata={
        "Sources": [bids_uri(tp.t1w, bids_dir), ref_uri], "SpatialReference": ref_uri,
        "Units": "arbitrary",
        "Resampling": "ANTs linear, rigid session-to-baseline transform (from-orig_to-<ref> xfm)",
        "SkullStripped": False})
    workflow.connect([
        (t1w_ref, ds_t1w, [("output_image", "in_file")]),
        (quality, ds_t1w, [("metadata", "extra_metadata")]),
    ])


def _connect_persistence(workflow, plan, config, sinks, uptake_wfs):
    """Late/early lesion ratios (:func:`bids_agquant.derivatives.persistence_pairs`)."""
    for method, early, late in persistence_pairs(plan, config):
        node = pe.Node(Persistence(), name=f"persistence_{method}_{late.node_suffix}")
        ds = sinks.node("persistence", late, method)
        workflow.connect([
            (uptake_wfs[(early.label, method)], node, [("outputnode.lesions_tsv", "early")]),
            (uptake_wfs[(late.label, method)], node, [("outputnode.lesions_tsv", "late")]),
            (node, ds, [("out_tsv", "in_file"), ("out_json", "sidecar_file")]),
        ])
