"""Derivative sinks (``ds_*`` nodes) and the sidecar metadata they write."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from ..bids import ParticipantPlan, Timepoint, bids_uri
from ..interfaces.bids import DerivativesSink

UNITS = {
    "T1map": "s",
    "R1map": "1/s",
    "deltaR1map": "1/s",
    "Gdconc": "mmol/L",
    "massconc": "mg/L",
    "enhancement": "%",
}


def timepoint_entities(plan: ParticipantPlan, timepoint: Timepoint) -> dict:
    """The source entities every output of a timepoint keeps (sub, ses, ce)."""
    entities = {"subject": plan.subject}
    if timepoint.session:
        entities["session"] = timepoint.session
    if timepoint.ceagent:
        entities["ceagent"] = timepoint.ceagent
    return entities


def ds_node(
    *, output_dir: str, plan: ParticipantPlan, timepoint: Timepoint, name: str,
    metadata: dict | None = None, **entities,
) -> pe.Node:
    """A sink writing one output of ``timepoint`` under its DESIGN.md §5 name."""
    all_entities = {**timepoint_entities(plan, timepoint), **entities}
    return pe.Node(
        DerivativesSink(base_directory=output_dir, entities=all_entities,
                        metadata=metadata or {}),
        name=name, run_without_submitting=True,
    )


def source_uris(bids_dir, files) -> list[str]:
    """``Sources`` field: BIDS URIs of raw input files."""
    return [bids_uri(f, bids_dir) for f in files if f is not None]


def vfa_metadata(timepoint: Timepoint, bids_dir) -> dict:
    """Sidecar fields of a VFA-derived T1/R1 map."""
    vfa = timepoint.vfa
    sources = source_uris(bids_dir, [*vfa.files, timepoint.b1map])
    return {
        "Sources": sources,
        "EstimationAlgorithm": "linear DESPOT1 (Deoni et al., MRM 2003) on SPGR signals",
        "EstimationReference": "Deoni SCL, Rutt BK, Peters TM. Magn Reson Med 2003;49:515-526",
        "FlipAngle": vfa.flip_angles_deg,
        "RepetitionTimeExcitation": vfa.repetition_time_s,
        "B1Correction": timepoint.b1map is not None,
        "SkullStripped": False,
    }
