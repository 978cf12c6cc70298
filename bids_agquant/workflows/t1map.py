"""T1 mapping of one timepoint, in the timepoint's native (acquisition) space."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids import Timepoint
from ..interfaces.qmri import FitVFA


def init_vfa_t1map_wf(timepoint: Timepoint, *, mem_gb: float = 2.0, name: str = "vfa_t1map_wf"):
    """Fit T1 and R1 from the timepoint's variable-flip-angle images.

    Parameters
    ----------
    timepoint : Timepoint
        Provides the VFA files, flip angles (deg), TR (s) and the optional B1+ map.
    mem_gb : float
        Memory estimate of the fit node (the scheduler uses it).

    Outputs
    -------
    t1map, r1map : T1 (s) and R1 (1/s), 0 where the fit is invalid.
    valid_mask : voxels with a physically valid fit.
    reference_image : highest-flip image (most T1-weighted), used to register VFA → T1w.
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["t1map", "r1map", "valid_mask", "reference_image",
                                      "b1_decision"]),
        name="outputnode",
    )
    vfa = timepoint.vfa
    fit = pe.Node(
        FitVFA(in_files=[str(f) for f in vfa.files], flip_angles_deg=vfa.flip_angles_deg,
               repetition_time_s=vfa.repetition_time_s),
        name="fit_vfa", mem_gb=mem_gb,
    )
    if timepoint.b1map is not None:
        fit.inputs.b1_map = str(timepoint.b1map)
        if timepoint.b1_units:
            fit.inputs.b1_units = str(timepoint.b1_units)
    workflow.connect([
        (fit, outputnode, [("t1map", "t1map"), ("r1map", "r1map"), ("valid_mask", "valid_mask"),
                           ("reference_image", "reference_image"),
                           ("b1_decision", "b1_decision")]),
    ])
    return workflow
