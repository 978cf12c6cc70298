"""The participant level's plan and graph: which participants, their plans (pre-flight
checked, agent resolved) and the Nipype workflow that processes them.

``cli/run.py`` parses, writes the run's configuration and plans, runs the graph this module
builds and turns the outcome into an exit code (fMRIPrep's parse / build / run split).
"""

from __future__ import annotations

import getpass
import logging
import os

from ..config import RunConfig, agent_for_timepoint, resolve_participant_agent
from ..errors import EX_DATAERR, EX_NOINPUT, InputError

LOGGER = logging.getLogger("bids_agquant")

#: Nipype settings of every run: content hashes (a re-run resumes from the cache), text crash
#: files the report can read, and no network or version checks.
NIPYPE_EXECUTION = {
    "hash_method": "content",
    "crashfile_format": "txt",
    "remove_unnecessary_outputs": False,
    "poll_sleep_duration": 0.1,
    "stop_on_first_crash": False,
    "check_version": False,
}


def plan_run(config: RunConfig):
    """Index the dataset and plan every selected participant.

    Returns
    -------
    plans : list of ParticipantPlan
        Participants whose inputs passed the pre-flight checks.
    failures : dict of str to InputError
        Participants refused, with the reason (the others go ahead).

    Raises
    ------
    InputError
        A participant or session asked for does not exist (66).
    """
    from ..plan import load_layout

    layout = load_layout(config.bids_dir)
    subjects = select_participants(layout, config)
    check_sessions(layout, subjects, config)
    return plan_participants(layout, subjects, config)


def build_workflow(config: RunConfig, plans):
    """The Nipype graph of ``plans`` and the plugin arguments to run it with.

    Under SLURM/SLURMGraph every node asks for its own memory and cores.
    """
    from nipype import config as nipype_config

    from ..workflows.base import init_bids_agquant_wf

    nipype_config.update_config({"execution": dict(NIPYPE_EXECUTION),
                                 "monitoring": {"enabled": False}})
    workflow = init_bids_agquant_wf(config, plans)
    plugin_args = plugin_settings(config)
    if config.plugin in ("SLURM", "SLURMGraph"):
        request_node_resources(workflow, plugin_args)
    return workflow, plugin_args


def select_participants(layout, config: RunConfig) -> list[str]:
    """The participants to process: all, or the ``--participant-label`` ones (66 when one
    does not exist, naming those that do)."""
    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise InputError(f"{config.bids_dir}: no sub-* folders found"
                         f"{participant_folder_hint(config.bids_dir)}", EX_NOINPUT)
    if not config.participant_label:
        return subjects
    missing = sorted(set(config.participant_label) - set(subjects))
    if missing:
        raise InputError(f"{config.bids_dir}: participant(s) not found: "
                         f"{', '.join('sub-' + m for m in missing)} (the dataset has "
                         f"{', '.join('sub-' + s for s in subjects)})", EX_NOINPUT)
    return list(dict.fromkeys(config.participant_label))


def participant_folder_hint(bids_dir) -> str:
    """What BIDS expects, when the dataset's folders look like a vendor's or converter's
    participant folders (``sub_01``, ``Sub-01``, ``sub01``)."""
    import re
    from pathlib import Path

    near = sorted(p.name for p in Path(bids_dir).iterdir()
                  if p.is_dir() and re.match(r"(?i)sub", p.name) and not p.name.startswith("sub-"))
    if not near:
        return ""
    shown = ", ".join(near[:5]) + (", …" if len(near) > 5 else "")
    return (f"; found {shown}: BIDS names participant folders sub-<label> (lower-case 'sub', a "
            "hyphen, then letters and digits only, e.g. sub-01), and the files inside start "
            "with the same sub-<label>_ (rename them, or re-run the DICOM converter with a "
            "BIDS output)")


def check_sessions(layout, subjects: list[str], config: RunConfig) -> None:
    """Every ``--session-label`` exists for at least one selected participant (else 66)."""
    if not config.session_label:
        return
    existing = set(layout.get_sessions(subject=subjects))
    missing = sorted(set(config.session_label) - existing)
    if missing:
        have = ", ".join(f"ses-{s}" for s in sorted(existing)) or "no sessions"
        raise InputError(f"{config.bids_dir}: session(s) not found for "
                         f"{', '.join('sub-' + s for s in subjects)}: "
                         f"{', '.join('ses-' + m for m in missing)} (they have {have})",
                         EX_NOINPUT)


def plan_participants(layout, subjects, config):
    """Plans (with their agent constants) of the participants whose inputs pass the
    pre-flight checks.

    A participant with unusable input is reported and left out; the others go ahead (one bad
    participant must not stop a 100-patient array). Returns (plans, failures).
    """
    from ..plan import collect_plan
    from ..preflight import check_plan

    plans, failures = [], {}
    for subject in subjects:
        try:
            plan = collect_plan(layout, subject, baseline_session=config.baseline_session,
                                session_labels=config.session_label or None,
                                contours_dir=config.contours_dir)
            check_plan(plan, config)
            resolve_agents(plan, config)
        except InputError as exc:
            failures[subject] = exc  # reported with the others at the end of the run
            continue
        for note in plan.notes:
            LOGGER.info("sub-%s: %s", subject, note)
        plans.append(plan)
    return plans, failures


def resolve_agents(plan, config: RunConfig) -> None:
    """Set ``plan.agent_parameters`` when a post-agent timepoint is converted to mM.

    T1 mapping alone needs no relaxivity, so a baseline-only plan works at any field strength
    (or none stated). Where ΔR1 is converted, every timepoint's agent must have a relaxivity
    at the field found; the refusal (65) names that field and where it was read.
    """
    if not plan.posts:
        plan.agent_parameters = None
        return
    field_T = plan.field_strength_T(config.field_strength_T)
    origin = plan.field_strength_origin(config.field_strength_T)
    if plan.baseline.field_strength_T is None:
        LOGGER.warning("sub-%s: %s; the relaxivity is taken at that field", plan.subject,
                       origin)
    try:
        plan.agent_parameters = resolve_participant_agent(plan.agent, plan.is_placebo, config,
                                                          field_T)
        for tp in plan.posts:
            agent_for_timepoint(tp.ceagent, plan.agent_parameters, field_T)
    except ValueError as exc:
        raise InputError(f"sub-{plan.subject}: {exc} (field strength: {origin}); T1 maps alone "
                         "need no relaxivity, converting ΔR1 to mM does", EX_DATAERR) from None


def plugin_settings(config: RunConfig) -> dict:
    """Nipype plugin arguments: local resources for MultiProc, the user's for the others."""
    if config.plugin == "MultiProc":
        args = {"n_procs": config.nprocs, "raise_insufficient": False, "maxtasksperchild": 1}
        if config.mem_gb:
            args["memory_gb"] = config.mem_gb
        return {**args, **config.plugin_args}
    if config.plugin in ("SLURM", "SLURMGraph"):
        # Nipype's SLURM plugins read $LOGNAME, which batch shells and containers may not set.
        os.environ.setdefault("LOGNAME", getpass.getuser())
    return dict(config.plugin_args)


def request_node_resources(workflow, plugin_args: dict) -> None:
    """Under SLURM/SLURMGraph, ask for each node's own memory and cores (``mem_gb``,
    ``n_procs``) unless the user's ``sbatch_args`` already fix them for every job.

    Nipype appends a node's ``sbatch_args`` to the global ones without a separator, hence the
    leading space; sbatch takes the last value of a repeated option.
    """
    import math
    import re

    user = str(plugin_args.get("sbatch_args", ""))
    fixed_mem = "--mem" in user
    fixed_cpus = re.search(r"(^|\s)(-c|--cpus-per-task)(\s|=|\d)", user) is not None
    for node in workflow._get_all_nodes():
        extra = ""
        if not fixed_mem:
            extra += f" --mem={math.ceil(node.mem_gb * 1024)}M"
        if not fixed_cpus:
            extra += f" --cpus-per-task={node.n_procs}"
        if extra:
            node.plugin_args = {**(node.plugin_args or {}),
                                "sbatch_args": (node.plugin_args or {}).get("sbatch_args", "")
                                + extra}


