"""Derivative sinks (``ds_*`` nodes) and the sidecar metadata they write."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from ..derivatives import b1_map_uri, bids_uri, expected_outputs
from ..interfaces.bids import DerivativesSink
from ..plan import ParticipantPlan, Timepoint

UNITS = {
    "T1map": "s",
    "R1map": "1/s",
    "deltaR1map": "1/s",
    "Gdconc": "mmol/L",
    "massconc": "mg/L",
    "enhancement": "%",
}


class Sinks:
    """The ``ds_*`` sink nodes of one participant, named by the output contract.

    Every sink takes its file name from :func:`bids_agquant.derivatives.expected_outputs`: a
    sink for an output the contract does not list is an error when the graph is built, and a
    test checks that every listed output has its sink.

    Parameters
    ----------
    plan : ParticipantPlan
    config : RunConfig
    """

    def __init__(self, plan: ParticipantPlan, config):
        self.output_dir = str(config.output_dir)
        self.outputs = {output.key: output for output in expected_outputs(plan, config)}

    def node(self, kind: str, timepoint: Timepoint, method: str | None = None, *,
             metadata: dict | None = None) -> pe.Node:
        """A sink writing the ``kind`` output of ``timepoint`` (and ``method``).

        Raises
        ------
        KeyError
            The contract lists no such output for this plan.
        """
        key = (kind, timepoint.label, method)
        if key not in self.outputs:
            raise KeyError(f"output {key} is not in the output contract of this plan")
        name = "_".join(["ds", kind.lower(), *([method] if method else []),
                         timepoint.node_suffix])
        return pe.Node(
            DerivativesSink(base_directory=self.output_dir,
                            entities=self.outputs[key].entity_dict, metadata=metadata or {}),
            name=name, run_without_submitting=True,
        )


def source_uris(bids_dir, files) -> list[str]:
    """``Sources`` field: BIDS URIs of raw input files."""
    return [bids_uri(f, bids_dir) for f in files if f is not None]


VFA_ALGORITHMS = {
    "linear": "linear DESPOT1 (ordinary least squares on S/sin(a) vs S/tan(a))",
    "wlls": "weighted linear DESPOT1 (iteratively reweighted least squares)",
    "nlls": "nonlinear least squares on the SPGR signal equation (M0, T1)",
}


def b1_fields(plan: ParticipantPlan, timepoint: Timepoint) -> dict:
    """``B1Correction``: the BIDS URI of the B1+ map the fit used, or ``"none"``; with the
    decision taken reading it (or, for VFA without a map, the size of the bias)."""
    from ..preflight import NO_B1_WARNING

    b1 = timepoint.b1
    if b1 is None:
        return {"B1Correction": "none",
                **({"B1Warning": NO_B1_WARNING} if timepoint.vfa is not None else {})}
    return {"B1Correction": b1_map_uri(plan, timepoint), "B1Method": b1.suffix,
            "B1Decision": b1.decision}


def _b1_files(timepoint: Timepoint) -> list:
    return list(timepoint.b1.files) if timepoint.b1 is not None else []


def vfa_metadata(plan: ParticipantPlan, timepoint: Timepoint, bids_dir, fit: str) -> dict:
    """Sidecar fields of a VFA-derived T1/R1 map."""
    vfa = timepoint.vfa
    sources = source_uris(bids_dir, [*vfa.files, *_b1_files(timepoint)])
    return {
        "Sources": sources,
        "EstimationAlgorithm": VFA_ALGORITHMS[fit],
        "EstimationReference": "Deoni SCL, Rutt BK, Peters TM. Magn Reson Med 2003;49:515-526",
        "FlipAngle": vfa.flip_angles_deg,
        "RepetitionTimeExcitation": vfa.repetition_time_s,
        **b1_fields(plan, timepoint),
        "SkullStripped": False,
    }


def mp2rage_metadata(plan: ParticipantPlan, timepoint: Timepoint, bids_dir,
                     inversion_efficiency=None) -> dict:
    """Sidecar fields of an MP2RAGE-derived T1/R1 map (every parameter of the look-up)."""
    mp2rage = timepoint.mp2rage
    protocol = mp2rage.protocol_fields(inversion_efficiency)
    uni = {"complex": "Re(conj(INV1) INV2) / (|INV1|^2 + |INV2|^2) from magnitude and phase",
           "unit1": "scanner UNIT1 image, UNI = x / 4095 - 0.5",
           "magnitude": "magnitude-only INV1/INV2, INV1 sign recovered from a smooth-M0 prior"}
    return {
        "Sources": source_uris(bids_dir, [*mp2rage.files, *_b1_files(timepoint)]),
        "EstimationAlgorithm": "look-up of T1 (0.05-5 s, monotonic branch) from the UNI "
                               "contrast with the MP2RAGE steady-state signal model"
                               + (", per-voxel B1+" if timepoint.b1 else ""),
        "EstimationReference": "Marques JP et al. NeuroImage 2010;49:1271-1281",
        "UNISource": uni[mp2rage.uni_source],
        "RepetitionTimePreparation": protocol["repetition_time_preparation_s"],
        "RepetitionTimeExcitation": (
            protocol["repetition_time_excitation_s"]
            if protocol["repetition_time_excitation_inv2_s"] is None else
            [protocol["repetition_time_excitation_s"],
             protocol["repetition_time_excitation_inv2_s"]]),
        # BIDS InversionTime is a single number: the pair goes in a key of our own.
        "InversionTimes": list(protocol["inversion_times_s"]),
        "FlipAngle": list(protocol["flip_angles_deg"]),
        "NumberShots": [protocol["shots_before"], protocol["shots_after"]],
        "NumberShotsInterpretation": mp2rage.shots_decision,
        "InversionEfficiency": protocol["inversion_efficiency"],
        **b1_fields(plan, timepoint),
        "SkullStripped": False,
    }


def t1map_metadata(plan: ParticipantPlan, timepoint: Timepoint, method: str, bids_dir,
                   config) -> dict:
    """Sidecar fields of a T1/R1 map of ``method`` (``"vfa"`` or ``"mp2rage"``)."""
    if method == "vfa":
        return vfa_metadata(plan, timepoint, bids_dir, config.vfa_fit)
    return mp2rage_metadata(plan, timepoint, bids_dir, config.inversion_efficiency)
