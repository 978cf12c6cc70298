"""Top-level workflows: the whole run, and one participant.

Data flow (DESIGN.md §2): per timepoint and T1 method (VFA, MP2RAGE) a native-space T1 fit
and a registration of the method's images to the session T1w;
per post-agent timepoint a T1w → baseline T1w registration (lesions masked out of the metric);
R1 maps resampled into the reference (baseline T1w) space; ΔR1 → mM Gd → mg/L; SE % on the
T1w; contours into reference and native spaces; one lesion table per post-agent timepoint.
"""

from __future__ import annotations

import dataclasses
import logging
from copy import deepcopy
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids import ParticipantPlan, bids_uri
from ..config import AgentParameters, RunConfig, agent_for_timepoint
from ..interfaces.ants import ApplyTransforms
from ..interfaces.lesions import LesionTable, Persistence, PrepareContours
from ..interfaces.qmri import ComputeUptake, SignalEnhancement, SignalMask
from ..interfaces.reports import RegistrationQuality
from .outputs import UNITS, ds_node, t1map_metadata
from .registration import init_rigid_registration_wf
from .t1map import init_t1map_wf

LOGGER = logging.getLogger("bids_agquant")

#: How R1 maps reach the reference grid (recorded in the sidecars).
RESAMPLING_R1 = ("ANTs cubic B-spline; invalid voxels filled from the nearest valid one "
                 "before, and set to 0 after")

#: ``from-`` label of each T1 method's images in the method → T1w transform names.
METHOD_KIND = {"vfa": "VFA", "mp2rage": "MP2RAGE"}


def init_bids_agquant_wf(config: RunConfig, plans: list[ParticipantPlan],
                         agents: dict[str, AgentParameters]):
    """Root workflow: one sub-workflow per participant, run in ``config.work_dir``."""
    from .. import __version__

    major_minor = "_".join(__version__.split(".")[:2]).replace("+", "_")
    workflow = pe.Workflow(name=f"bids_agquant_{major_minor}_wf", base_dir=str(config.work_dir))
    for plan in plans:
        participant_wf = init_participant_wf(plan, config, agents[plan.subject])
        crash_dir = Path(config.output_dir) / f"sub-{plan.subject}" / "log" / config.run_uuid
        participant_wf.config["execution"]["crashdump_dir"] = str(crash_dir)
        for node in participant_wf._get_all_nodes():
            node.config = deepcopy(participant_wf.config)
        workflow.add_nodes([participant_wf])
    return workflow


def _resample(name, *, reference, interpolation="linear", out_name="resampled.nii.gz", **kw):
    return pe.Node(ApplyTransforms(reference_image=str(reference), interpolation=interpolation,
                                   out_name=out_name, **kw), name=name, mem_gb=1.0)


def _resample_map(name, *, reference):
    """R1 into the reference grid: cubic B-spline, invalid voxels filled first, then zeroed
    (see :class:`~bids_agquant.interfaces.ants.ApplyTransforms`)."""
    return _resample(name, reference=reference, interpolation="bSpline", out_name="r1.nii.gz")


def init_participant_wf(plan: ParticipantPlan, config: RunConfig, agent: AgentParameters):
    """Uptake workflow of one participant.

    Every timepoint gets a native-space T1/R1 map per T1 method it has (``desc-vfa``,
    ``desc-mp2rage``). Without a baseline T1w (plain T1 mapping) that is all. Otherwise each
    method's images are registered to their session's T1w, and every post-agent timepoint gets
    uptake maps and lesion tables for each method it shares with the baseline.

    Parameters
    ----------
    plan : ParticipantPlan
        Images, parameters and contours resolved from the BIDS dataset.
    config : RunConfig
        Run options (seed, threads, sloppy, output directory, thresholds, fit options).
    agent : AgentParameters
        The participant's agent; a ``ce-<label>`` naming another preset overrides it for
        that timepoint (:func:`bids_agquant.config.agent_for_timepoint`).
    """
    workflow = pe.Workflow(name=f"sub_{plan.subject}_wf")
    out = str(config.output_dir)
    bids_dir = Path(config.bids_dir)
    base = plan.baseline
    ref_label = plan.reference_label
    threads = config.omp_nthreads
    reg_kw = {"seed": config.random_seed, "omp_nthreads": threads, "sloppy": config.sloppy}

    # ---------------------------------------------------------------- T1 maps, native space
    t1map_wfs, method_regs = {}, {}
    for tp in [base, *plan.posts]:
        suffix = tp.node_suffix
        for method in tp.methods:
            key = (tp.label, method)
            t1_wf = init_t1map_wf(tp, method, vfa_fit=config.vfa_fit,
                                  inversion_efficiency=config.inversion_efficiency,
                                  name=f"{method}_t1map_{suffix}_wf")
            t1map_wfs[key] = t1_wf
            meta = t1map_metadata(tp, method, bids_dir, config)
            for field, suffix_ in (("t1map", "T1map"), ("r1map", "R1map")):
                ds = ds_node(output_dir=out, plan=plan, timepoint=tp, desc=method,
                             suffix=suffix_, name=f"ds_{suffix_.lower()}_{method}_{suffix}",
                             metadata={**meta, "Units": UNITS[suffix_]})
                workflow.connect(t1_wf, f"outputnode.{field}", ds, "in_file")
            if tp.t1w is None:
                continue  # plain T1 mapping: no anatomical reference to register to
            # The T1-mapping images and the T1w are separate acquisitions: the head may move.
            reg = init_rigid_registration_wf(fixed_image=str(tp.t1w),
                                             name=f"reg_{method}_{suffix}_wf", **reg_kw)
            workflow.connect(t1_wf, "outputnode.reference_image", reg, "inputnode.moving_image")
            method_regs[key] = reg
            kind = METHOD_KIND[method]
            ds_xfm = ds_node(output_dir=out, plan=plan, timepoint=tp, suffix="xfm",
                             name=f"ds_xfm_{method}_{suffix}",
                             metadata={"From": kind, "To": "T1w", "Type": "rigid (ANTs)",
                                       "Sources": meta["Sources"][:1]
                                       + [bids_uri(tp.t1w, bids_dir)]},
                             **{"from": kind, "to": "T1w"})
            workflow.connect(reg, "outputnode.transform", ds_xfm, "in_file")

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
        r1_node = _resample_map(f"r1_{method}_base_to_ref", reference=ref_t1w)
        valid_node = _resample(f"valid_{method}_base_to_ref", reference=ref_t1w,
                               out_name="valid.nii.gz")
        for node, field in ((r1_node, "r1map"), (valid_node, "valid_mask")):
            workflow.connect([
                (t1map_wfs[key], node, [(f"outputnode.{field}", "input_image")]),
                (base_xfm, node, [("out", "transforms")]),
            ])
        workflow.connect(t1map_wfs[key], "outputnode.valid_mask", r1_node, "valid_mask")
        r1_base_ref[method], valid_base_ref[method] = r1_node, valid_node
        ds_r1_base = ds_node(output_dir=out, plan=plan, timepoint=base, space=ref_label,
                             desc=method, suffix="R1map", name=f"ds_r1map_ref_{method}_baseline",
                             metadata={**t1map_metadata(base, method, bids_dir, config),
                                       "Units": "1/s", "SpatialReference": ref_uri,
                                       "Resampling": RESAMPLING_R1})
        workflow.connect(r1_node, "output_image", ds_r1_base, "in_file")

    # ---------------------------------------------------------------- contours → reference
    labels_ref = contour_tp = None
    contours = plan.contours
    if contours is not None:
        prep = pe.Node(PrepareContours(in_file=str(contours.file), kind=contours.kind),
                       name="prepare_contours")
        labels_ref = _resample("contours_to_ref", reference=ref_t1w, interpolation="genericLabel",
                               out_name="labels.nii.gz")
        workflow.connect(prep, "labels", labels_ref, "input_image")
        # Contours drawn on the baseline need no registration (only a regrid); contours drawn
        # on another timepoint follow that timepoint's T1w → baseline transform.
        contour_tp = next((tp for tp in plan.posts
                           if tp.session == contours.session and tp.ceagent == contours.ceagent),
                          None)
        contours_root = Path(config.contours_dir or bids_dir / "derivatives" / "contours")
        contour_meta = {"Sources": [bids_uri(contours.file, contours_root, "contours")]}
        ds_labels_base = ds_node(output_dir=out, plan=plan, timepoint=base, desc="GTV",
                                 suffix="dseg", name="ds_dseg_baseline",
                                 metadata={**contour_meta, "SpatialReference": ref_uri,
                                           "Resampling": "ANTs genericLabel"})
        workflow.connect(labels_ref, "output_image", ds_labels_base, "in_file")

    ref_mask = pe.Node(SignalMask(in_file=ref_t1w), name="ref_registration_mask")
    if labels_ref is not None and (contour_tp is None):
        workflow.connect(labels_ref, "output_image", ref_mask, "exclude_labels")

    # ---------------------------------------------------------------- post-agent timepoints
    same_agent: dict[str, list] = {}  # method -> timepoints of the participant's own agent
    field_strength = plan.baseline.field_strength_T or agent.field_strength_T
    for tp in plan.posts:
        suffix = tp.node_suffix
        tp_reg = init_rigid_registration_wf(fixed_image=ref_t1w, moving_image=str(tp.t1w),
                                            name=f"reg_{suffix}_to_ref_wf", **reg_kw)
        workflow.connect(ref_mask, "out_mask", tp_reg, "inputnode.fixed_mask")
        ds_xfm = ds_node(output_dir=out, plan=plan, timepoint=tp, suffix="xfm",
                         name=f"ds_xfm_{suffix}",
                         metadata={"From": "orig", "To": ref_label, "Type": "rigid (ANTs)",
                                   "Sources": [bids_uri(tp.t1w, bids_dir), ref_uri]},
                         **{"from": "orig", "to": ref_label})
        workflow.connect(tp_reg, "outputnode.transform", ds_xfm, "in_file")

        session_xfm = pe.Node(niu.Merge(1), name=f"session_xfm_{suffix}")
        workflow.connect(tp_reg, "outputnode.transform", session_xfm, "in1")
        t1w_ref = _resample(f"t1w_{suffix}_to_ref", reference=ref_t1w, input_image=str(tp.t1w),
                            out_name="t1w.nii.gz")
        workflow.connect(session_xfm, "out", t1w_ref, "transforms")
        _connect_registration_qc(workflow, plan, config, tp, t1w_ref=t1w_ref, ref_mask=ref_mask,
                                 labels_ref=labels_ref)
        enhancement = pe.Node(SignalEnhancement(pre=ref_t1w), name=f"enhancement_{suffix}")
        workflow.connect(t1w_ref, "output_image", enhancement, "post")
        ds_se = ds_node(output_dir=out, plan=plan, timepoint=tp, space=ref_label, desc="t1w",
                        suffix="enhancement", name=f"ds_enhancement_{suffix}",
                        metadata={"Sources": [bids_uri(tp.t1w, bids_dir), ref_uri],
                                  "SpatialReference": ref_uri, "Units": "%",
                                  "Description": "100 (S_post - S_pre) / S_pre on the T1w GRE",
                                  "SkullStripped": False})
        workflow.connect(enhancement, "enhancement", ds_se, "in_file")

        if labels_ref is not None:
            labels_native = _resample(f"contours_to_{suffix}", reference=str(tp.t1w),
                                      interpolation="genericLabel", out_name="labels.nii.gz",
                                      invert=[True])
            workflow.connect([
                (labels_ref, labels_native, [("output_image", "input_image")]),
                (session_xfm, labels_native, [("out", "transforms")]),
            ])
            if contour_tp is not None and contour_tp.label == tp.label:
                # Contours drawn on this timepoint: go to the reference through its inverse
                # transform (T1w grid → baseline), and cut the lesions out of its own metric
                # mask.
                workflow.disconnect(prep, "labels", labels_ref, "input_image")
                labels_ref.inputs.invert = [False]
                workflow.connect([
                    (prep, labels_ref, [("labels", "input_image")]),
                    (session_xfm, labels_ref, [("out", "transforms")]),
                ])
            for node, space, name in ((labels_ref, ref_label, f"ds_dseg_ref_{suffix}"),
                                      (labels_native, None, f"ds_dseg_{suffix}")):
                entities = {"desc": "GTV", "suffix": "dseg"}
                meta = dict(contour_meta)
                if space:
                    entities["space"] = space
                    meta["SpatialReference"] = ref_uri
                ds = ds_node(output_dir=out, plan=plan, timepoint=tp, name=name, metadata=meta,
                             **entities)
                workflow.connect(node, "output_image", ds, "in_file")

        tp_agent, agent_decision = agent_for_timepoint(tp.ceagent, agent, field_strength)
        LOGGER.info("sub-%s %s: %s", plan.subject, tp.label, agent_decision)
        for method in plan.methods_for(tp):
            _connect_uptake(workflow, plan, config, tp, method, agent=tp_agent,
                            tp_reg=tp_reg, method_reg=method_regs[(tp.label, method)],
                            t1_wf=t1map_wfs[(tp.label, method)],
                            r1_base=r1_base_ref[method], valid_base=valid_base_ref[method],
                            enhancement=enhancement, labels_ref=labels_ref,
                            normal_mask=ref_mask)
            if tp_agent is agent:
                same_agent.setdefault(method, []).append(tp)
    if labels_ref is not None:
        _connect_persistence(workflow, plan, config, same_agent)
    return workflow


def _connect_registration_qc(workflow, plan, config, tp, *, t1w_ref, ref_mask, labels_ref):
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
    if labels_ref is not None:
        workflow.connect(labels_ref, "output_image", quality, "exclude_labels")
    ds_t1w = ds_node(output_dir=str(config.output_dir), plan=plan, timepoint=tp,
                     space=plan.reference_label, desc="preproc", suffix="T1w",
                     name=f"ds_t1w_ref_{tp.node_suffix}",
                     metadata={"Sources": [bids_uri(tp.t1w, bids_dir), ref_uri],
                               "SpatialReference": ref_uri, "Units": "arbitrary",
                               "Resampling": "ANTs linear, rigid session-to-baseline transform "
                                             "(from-orig_to-<ref> xfm)",
                               "SkullStripped": False})
    workflow.connect([
        (t1w_ref, ds_t1w, [("output_image", "in_file")]),
        (quality, ds_t1w, [("metadata", "extra_metadata")]),
    ])


def _connect_persistence(workflow, plan, config, timepoints_by_method):
    """Late/early lesion ratios: every later timepoint of the participant's agent against the
    earliest one (by hours after injection, else acquisition order)."""
    for method, timepoints in timepoints_by_method.items():
        ordered = sorted(timepoints, key=lambda tp: (tp.hours_post_injection is None,
                                                     tp.hours_post_injection or 0.0))
        early = ordered[0]
        for late in ordered[1:]:
            name = f"{method}_{late.node_suffix}"
            node = pe.Node(Persistence(), name=f"persistence_{name}")
            ds = ds_node(output_dir=str(config.output_dir), plan=plan, timepoint=late,
                         desc=method, suffix="persistence", extension=".tsv",
                         name=f"ds_persistence_{name}")
            workflow.connect([
                (workflow.get_node(f"lesion_table_{method}_{early.node_suffix}"), node,
                 [("out_tsv", "early")]),
                (workflow.get_node(f"lesion_table_{name}"), node, [("out_tsv", "late")]),
                (node, ds, [("out_tsv", "in_file"), ("out_json", "sidecar_file")]),
            ])


def _connect_uptake(workflow, plan, config, tp, method, *, agent, tp_reg, method_reg, t1_wf,
                    r1_base, valid_base, enhancement, labels_ref, normal_mask):
    """R1 of ``method`` into the reference, ΔR1 → mM Gd → mg/L, sinks and the lesion table."""
    out = str(config.output_dir)
    bids_dir = Path(config.bids_dir)
    base = plan.baseline
    ref_t1w, ref_label = str(base.t1w), plan.reference_label
    ref_uri = bids_uri(base.t1w, bids_dir)
    name = f"{method}_{tp.node_suffix}"

    # R1 and its validity into reference space: point p ↦ T_method(T_session(p)).
    xfms = pe.Node(niu.Merge(2), name=f"xfms_{name}")
    workflow.connect([
        (tp_reg, xfms, [("outputnode.transform", "in1")]),
        (method_reg, xfms, [("outputnode.transform", "in2")]),
    ])
    r1_ref = _resample_map(f"r1_{name}_to_ref", reference=ref_t1w)
    valid_ref = _resample(f"valid_{name}_to_ref", reference=ref_t1w, out_name="valid.nii.gz")
    for node, field in ((r1_ref, "r1map"), (valid_ref, "valid_mask")):
        workflow.connect([
            (t1_wf, node, [(f"outputnode.{field}", "input_image")]),
            (xfms, node, [("out", "transforms")]),
        ])
    workflow.connect(t1_wf, "outputnode.valid_mask", r1_ref, "valid_mask")

    uptake = pe.Node(ComputeUptake(agent=dataclasses.asdict(agent)), name=f"uptake_{name}",
                     mem_gb=1.0)
    workflow.connect([
        (r1_ref, uptake, [("output_image", "r1_post")]),
        (valid_ref, uptake, [("output_image", "valid_post")]),
        (r1_base, uptake, [("output_image", "r1_pre")]),
        (valid_base, uptake, [("output_image", "valid_pre")]),
    ])

    files = tp.vfa.files + base.vfa.files if method == "vfa" else (
        tp.mp2rage.files + base.mp2rage.files)
    map_meta = {"Sources": [bids_uri(f, bids_dir) for f in files], "SpatialReference": ref_uri,
                "BaselineTimepoint": base.label, "T1Method": method,
                "EstimationAlgorithm": f"{method} T1 maps, resampled ({RESAMPLING_R1}) to the "
                                       "baseline T1w; C = (R1_post - R1_pre) / r1",
                "SkullStripped": False}
    agent_meta = agent.as_metadata()
    for field, suffix_, extra in (
        ("delta_r1", "deltaR1map", {}),
        ("gd_conc", "Gdconc", agent_meta),
        ("mass_conc", "massconc", {**agent_meta, "MassPerMillimolarGd": agent.mg_per_L_per_mM}),
    ):
        ds = ds_node(output_dir=out, plan=plan, timepoint=tp, space=ref_label, desc=method,
                     suffix=suffix_, name=f"ds_{suffix_.lower()}_{name}",
                     metadata={**map_meta, **extra, "Units": UNITS[suffix_]})
        workflow.connect(uptake, field, ds, "in_file")
    ds_r1 = ds_node(output_dir=out, plan=plan, timepoint=tp, space=ref_label, desc=method,
                    suffix="R1map", name=f"ds_r1map_ref_{name}",
                    metadata={**t1map_metadata(tp, method, bids_dir, config), "Units": "1/s",
                              "SpatialReference": ref_uri, "Resampling": RESAMPLING_R1})
    workflow.connect(r1_ref, "output_image", ds_r1, "in_file")

    if labels_ref is None:
        return
    table = pe.Node(LesionTable(timepoint=tp.label, t1_method=method,
                                measurable_threshold_mm=config.measurable_threshold_mm,
                                hours_post_injection=tp.hours_post_injection,
                                dose_mg_per_kg=plan.dose_mg_per_kg,
                                weight_kg=plan.weight_kg,
                                r1_per_mM_per_s=agent.r1_per_mM_per_s),
                    name=f"lesion_table_{name}")
    if plan.contours.names_tsv is not None:
        table.inputs.names_tsv = str(plan.contours.names_tsv)
    workflow.connect([
        (labels_ref, table, [("output_image", "labels")]),
        (uptake, table, [("gd_conc", "gd_conc"), ("mass_conc", "mass_conc"),
                         ("delta_r1", "delta_r1"), ("t1_pre", "t1_pre"),
                         ("t1_post", "t1_post")]),
        (enhancement, table, [("enhancement", "enhancement")]),
        (normal_mask, table, [("out_mask", "normal_mask")]),
    ])
    ds_table = ds_node(output_dir=out, plan=plan, timepoint=tp, desc=method,
                       suffix="lesions", extension=".tsv", name=f"ds_lesions_{name}")
    ds_controls = ds_node(output_dir=out, plan=plan, timepoint=tp, desc=method,
                          suffix="controls", extension=".tsv", name=f"ds_controls_{name}")
    ds_profiles = ds_node(output_dir=out, plan=plan, timepoint=tp, desc=method,
                          suffix="profiles", extension=".tsv", name=f"ds_profiles_{name}")
    workflow.connect([
        (table, ds_table, [("out_tsv", "in_file"), ("out_json", "sidecar_file")]),
        (table, ds_controls, [("controls_tsv", "in_file"), ("controls_json", "sidecar_file")]),
        (table, ds_profiles, [("profiles_tsv", "in_file"), ("profiles_json", "sidecar_file")]),
    ])
