"""T1 mapping of one timepoint, in the timepoint's native (acquisition) space."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.qmri import FitMP2RAGE, FitVFA
from ..plan import Timepoint

_OUTPUTS = ["t1map", "r1map", "valid_mask", "reference_image", "b1_decision"]


def _b1_inputs(workflow, node, timepoint: Timepoint) -> None:
    """With a B1+ map, ``inputnode.b1_map`` (the session's fraction map, from
    :func:`bids_agquant.workflows.b1.init_b1_wf`) feeds the fit."""
    if timepoint.b1 is not None:
        inputnode = pe.Node(niu.IdentityInterface(fields=["b1_map"]), name="inputnode")
        node.inputs.b1_units = "fraction"
        workflow.connect(inputnode, "b1_map", node, "b1_map")


def init_vfa_t1map_wf(timepoint: Timepoint, *, method: str, mem_gb: float = 2.0,
                      name: str = "vfa_t1map_wf"):
    """Fit T1 and R1 from the timepoint's variable-flip-angle images.

    Parameters
    ----------
    timepoint : Timepoint
        Provides the VFA files, flip angles (deg), TR (s) and the optional B1+ map.
    method : {"linear", "wlls", "nlls"}
        DESPOT1 fit method (``qmri.vfa.fit_vfa``).
    mem_gb : float
        Memory estimate of the fit node (the scheduler uses it).

    Inputs
    ------
    b1_map : the session's B1+ fraction map (only when the timepoint has B1+ data).

    Outputs
    -------
    t1map, r1map : T1 (s) and R1 (1/s), 0 where the fit is invalid.
    valid_mask : voxels with a physically valid fit.
    reference_image : highest-flip image (most T1-weighted), used to register VFA → T1w.
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUTS), name="outputnode")
    vfa = timepoint.vfa
    fit = pe.Node(
        FitVFA(in_files=[str(f) for f in vfa.files], flip_angles_deg=vfa.flip_angles_deg,
               repetition_time_s=vfa.repetition_time_s, method=method),
        name="fit_vfa", mem_gb=mem_gb,
    )
    _b1_inputs(workflow, fit, timepoint)
    workflow.connect([(fit, outputnode, [(field, field) for field in _OUTPUTS])])
    return workflow


def init_mp2rage_t1map_wf(timepoint: Timepoint, *, inversion_efficiency: float | None = None,
                          mem_gb: float = 2.0, name: str = "mp2rage_t1map_wf"):
    """T1 and R1 from the timepoint's MP2RAGE images (look-up on the UNI contrast).

    Parameters
    ----------
    timepoint : Timepoint
        Provides the MP2RAGE images and sequence parameters and the optional B1+ map.
    inversion_efficiency : float, optional
        Overrides the sidecar / default inversion efficiency.

    Outputs
    -------
    t1map, r1map : T1 (s) and R1 (1/s), 0 where the look-up is invalid.
    valid_mask : voxels whose UNI lies on the monotonic branch of the look-up table.
    reference_image : INV2 magnitude (or UNI), used to register MP2RAGE → T1w.
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=[*_OUTPUTS, "uni", "uni_decision"]),
                         name="outputnode")
    mp2rage = timepoint.mp2rage
    fit = pe.Node(FitMP2RAGE(uni_source=mp2rage.uni_source,
                             protocol=mp2rage.protocol_fields(inversion_efficiency)),
                  name="fit_mp2rage", mem_gb=mem_gb)
    for field in ("inv1", "inv2", "inv1_phase", "inv2_phase", "unit1"):
        path = getattr(mp2rage, field)
        if path is not None:
            setattr(fit.inputs, field, str(path))
    if mp2rage.phase_units:
        fit.inputs.phase_units = mp2rage.phase_units
    _b1_inputs(workflow, fit, timepoint)
    outputnode.inputs.reference_image = str(mp2rage.registration_image)
    workflow.connect([
        (fit, outputnode, [(field, field) for field in ("t1map", "r1map", "valid_mask", "uni",
                                                         "b1_decision", "uni_decision")]),
    ])
    return workflow


def init_t1map_wf(timepoint: Timepoint, method: str, *, vfa_fit: str,
                  inversion_efficiency: float | None = None, name: str):
    """The T1-mapping workflow of ``method`` (``"vfa"`` or ``"mp2rage"``) for a timepoint."""
    if method == "vfa":
        return init_vfa_t1map_wf(timepoint, method=vfa_fit, name=name)
    if method == "mp2rage":
        return init_mp2rage_t1map_wf(timepoint, inversion_efficiency=inversion_efficiency,
                                     name=name)
    raise ValueError(f"unknown T1 method {method!r}")
