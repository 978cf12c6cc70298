"""The B1+ map of one session, from whichever BIDS representation it was acquired in."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..b1maps import REFERENCES, equation
from ..derivatives import bids_uri
from ..interfaces.b1 import ComputeB1
from ..plan import ParticipantPlan, Timepoint, _encode


def b1_metadata(timepoint: Timepoint, bids_dir) -> dict:
    """Sidecar fields of a B1+ map computed from raw acquisitions."""
    source = timepoint.b1
    meta = {
        "Units": "fraction",
        "Description": "B1+ as a fraction of nominal: effective flip = B1 x nominal flip",
        "Sources": [bids_uri(f, Path(bids_dir)) for f in source.files],
        "B1Method": source.suffix,
        "EstimationAlgorithm": equation(source.suffix),
        "EstimationReference": REFERENCES[source.suffix],
        "FlipAngle": source.flip_angles_deg,
        "B1Decision": source.decision,
        "PlausibilityChecks": source.checks,
        "SkullStripped": False,
    }
    # BIDS RepetitionTime / InversionTime are single numbers: pairs go in keys of our own.
    if source.suffix == "TB1AFI":
        meta["RepetitionTimes"] = source.repetition_times_s
    if source.suffix == "TB1SRGE":
        meta.update({"RepetitionTimePreparation": source.repetition_times_s[0],
                     "RepetitionTimeExcitation": source.repetition_times_s[1],
                     "InversionTimes": source.inversion_times_s,
                     "NumberShots": source.number_shots})
    return meta


def init_b1_wf(plan: ParticipantPlan, config, sinks, timepoint: Timepoint, *, name: str):
    """B1+ fraction map of ``timepoint``'s session, on the map's own grid.

    A given ``TB1map`` is converted to a fraction (its units decided as the pre-flight check
    did, ``--b1-units`` first); raw ``TB1TFL``/``TB1AFI``/``TB1DAM``/``TB1SRGE`` acquisitions
    are computed and written as ``fmap/..._desc-<method>_TB1map`` (the ``TB1map`` output of
    the contract).

    Outputs
    -------
    b1_map : B1+ fraction map (0 where undefined).
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=["b1_map"]), name="outputnode")
    compute = pe.Node(ComputeB1(source=json.dumps(_encode(timepoint.b1)),
                                units_override=config.b1_units or ""), name="compute_b1")
    workflow.connect(compute, "b1_fraction", outputnode, "b1_map")
    if timepoint.b1.computed:
        ds_b1 = sinks.node("TB1map", timepoint,
                           metadata=b1_metadata(timepoint, config.bids_dir))
        workflow.connect(compute, "b1_fraction", ds_b1, "in_file")
    return workflow
