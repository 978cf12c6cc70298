"""GTV contours: from the file they were drawn on into the reference space and back into
every post-agent session's native space."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..derivatives import bids_uri
from ..interfaces.lesions import PrepareContours
from .common import resample_node


def contour_timepoint(plan):
    """The post-agent timepoint the contours were drawn on, or None (drawn on the baseline)."""
    contours = plan.contours
    return next((tp for tp in plan.posts
                 if (tp.session, tp.ceagent) == (contours.session, contours.ceagent)), None)


def init_contours_wf(plan, config, sinks, *, name: str = "contours_wf"):
    """Lesion labels in reference space (the baseline T1w grid).

    Contours drawn on the baseline only need a regrid onto the baseline T1w; contours drawn
    on a post-agent timepoint follow that timepoint's T1w → baseline transform. The route is
    chosen here, when the graph is built.

    Parameters
    ----------
    plan : ParticipantPlan
        With ``contours`` and a baseline T1w.
    config : RunConfig
        ``bids_dir`` and ``contours_dir`` (for the ``Sources`` URIs).
    sinks : Sinks
        The participant's derivative sinks.

    Inputs
    ------
    session_xfm
        Session T1w → baseline transform of the timepoint the contours were drawn on
        (only when that is a post-agent timepoint, :func:`contour_timepoint`).

    Outputs
    -------
    labels_ref
        Lesion labels on the baseline T1w grid (int16).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["session_xfm"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["labels_ref"]), name="outputnode")
    base, contours = plan.baseline, plan.contours
    prep = pe.Node(PrepareContours(in_file=str(contours.file), kind=contours.kind),
                   name="prepare_contours")
    labels_ref = resample_node("contours_to_ref", reference=str(base.t1w),
                               interpolation="genericLabel", out_name="labels.nii.gz")
    workflow.connect(prep, "labels", labels_ref, "input_image")
    if contour_timepoint(plan) is not None:
        labels_ref.inputs.invert = [False]
        workflow.connect(inputnode, "session_xfm", labels_ref, "transforms")
    workflow.connect(labels_ref, "output_image", outputnode, "labels_ref")
    ds_base = sinks.node("dseg", base, metadata={
        **contour_metadata(plan, config), "SpatialReference": _ref_uri(plan, config),
        "Resampling": "ANTs genericLabel"})
    workflow.connect(labels_ref, "output_image", ds_base, "in_file")
    return workflow


def init_session_contours_wf(plan, config, sinks, timepoint, *, name: str):
    """The reference-space labels into one post-agent timepoint's native (T1w) space,
    through the inverse of its session transform (label-preserving ``genericLabel``).

    Inputs
    ------
    labels_ref : lesion labels on the baseline T1w grid.
    session_xfm : the timepoint's session T1w → baseline transform.

    Outputs
    -------
    labels : the labels on the timepoint's T1w grid.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["labels_ref", "session_xfm"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["labels"]), name="outputnode")
    native = resample_node("contours_to_session", reference=str(timepoint.t1w),
                           interpolation="genericLabel", out_name="labels.nii.gz", invert=[True])
    meta = contour_metadata(plan, config)
    ds_ref = sinks.node("dseg_ref", timepoint,
                        metadata={**meta, "SpatialReference": _ref_uri(plan, config)})
    ds_native = sinks.node("dseg", timepoint, metadata=dict(meta))
    workflow.connect([
        (inputnode, native, [("labels_ref", "input_image"), ("session_xfm", "transforms")]),
        (native, outputnode, [("output_image", "labels")]),
        (inputnode, ds_ref, [("labels_ref", "in_file")]),
        (native, ds_native, [("output_image", "in_file")]),
    ])
    return workflow


def contour_metadata(plan, config) -> dict:
    """``Sources`` of every written label map: the contour file in the contours dataset."""
    return {"Sources": [bids_uri(plan.contours.file, Path(config.contours_dir), "contours")]}


def _ref_uri(plan, config) -> str:
    return bids_uri(plan.baseline.t1w, Path(config.bids_dir))
