"""The output contract: BIDS-Derivatives names, URIs, the dataset description, and the list of
outputs a participant's run writes (:func:`expected_outputs`).

Names come from pybids ``build_path`` with the app's path patterns (``data/derivatives.json``).
:func:`expected_outputs` is the one list of what a plan produces: the workflow's sinks take
their names from it, the report checks it for missing files, the tests compare the two.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from . import __version__
from .io import atomic_write_text

LOGGER = logging.getLogger("bids_agquant")

#: Files of a run under ``sub-<id>/log/<run_uuid>/``: written once by the run, read by the
#: report and by anyone auditing or repeating the run.
RUN_CONFIG_FILE, PLAN_FILE = "bids_agquant.toml", "plan.json"


def run_log_dir(output_dir: Path, subject: str, run_uuid: str) -> Path:
    """``sub-<id>/log/<run_uuid>/``: the run's configuration, plan and crash files."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_uuid


@cache
def path_patterns() -> tuple[str, ...]:
    """pybids path patterns for every output this app writes."""
    text = resources.files("bids_agquant.data").joinpath("derivatives.json").read_text()
    config = json.loads(text)
    return tuple(config["default_path_patterns"])


def build_derivative_path(entities: dict) -> str:
    """Relative output path for ``entities`` (pybids ``build_path`` with our patterns)."""
    from bids.layout.writing import build_path

    path = build_path(entities, list(path_patterns()), strict=True)
    if path is None:
        raise ValueError(f"no output pattern matches {entities}")
    return path


def bids_uri(path: Path, root: Path, dataset: str = "raw") -> str:
    """BIDS URI ``bids:<dataset>:<relative path>`` of a file of a linked dataset."""
    return f"bids:{dataset}:{Path(path).resolve().relative_to(Path(root).resolve()).as_posix()}"


DESCRIPTIONS = {
    "vfa": "Quantity estimated from variable-flip-angle spoiled-GRE images (DESPOT1 fit, "
           "optional B1+ correction)",
    "mp2rage": "Quantity estimated from MP2RAGE images (Marques 2010 signal model, look-up of "
               "T1 from the UNI contrast, optional B1+ correction)",
    "t1w": "Signal enhancement computed on the T1-weighted GRE images",
    "GTV": "Gross tumour volume contours, one integer label per lesion",
    "preproc": "Session T1w rigidly registered and resampled (linear) onto the baseline T1w grid",
    "tfl": "B1+ (fraction of nominal) computed from Siemens tfl_b1map images (TB1TFL): "
           "famp / (10 FlipAngle)",
    "afi": "B1+ (fraction of nominal) computed from actual flip-angle imaging (TB1AFI, "
           "Yarnykh 2007)",
    "dam": "B1+ (fraction of nominal) computed by the double-angle method (TB1DAM)",
    "sa2rage": "B1+ (fraction of nominal) computed from SA2RAGE images (TB1SRGE, Eggenschwiler "
               "2012) by look-up at T1 1.5 s",
}

BIDSIGNORE = [
    "*.html",
    "sub-*/figures",
    "logs",
    "sub-*/log",  # crash files and run configuration (the validator wants no trailing slash)
    "*_xfm.*",
    "*_deltaR1map.*",
    "*_Gdconc.*",
    "*_massconc.*",
    "*_enhancement.*",
    "*_lesions.*",
    "*_controls.*",
    "*_profiles.*",
    "*_persistence.*",
    "group_*",
]


def write_derivative_description(output_dir: Path, bids_dir: Path, *, contours_dir=None) -> None:
    """``dataset_description.json``, ``.bidsignore`` and ``descriptions.tsv`` (atomic)."""
    output_dir = Path(output_dir)
    container = {}
    if os.environ.get("BIDS_AGQUANT_CONTAINER"):
        container = {"Container": {"Type": os.environ.get("BIDS_AGQUANT_CONTAINER_TYPE", "docker"),
                                   "Tag": os.environ["BIDS_AGQUANT_CONTAINER"]}}
    links = {"raw": Path(bids_dir).resolve().as_uri()}
    if contours_dir is not None:
        links["contours"] = Path(contours_dir).resolve().as_uri()
    source_description = {}
    src_json = Path(bids_dir) / "dataset_description.json"
    if src_json.exists():
        try:
            source_description = json.loads(src_json.read_text())
        except json.JSONDecodeError:
            LOGGER.warning("%s is not valid JSON; SourceDatasets left minimal", src_json)
    source = {"URL": links["raw"]}
    if source_description.get("DatasetDOI"):
        source["DOI"] = source_description["DatasetDOI"]
    description = {
        "Name": "bids-agquant: gadolinium nanoparticle uptake maps and per-lesion statistics",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "bids-agquant",
            "Version": __version__,
            "CodeURL": "https://pypi.org/project/bids-agquant/",
            **container,
        }],
        "SourceDatasets": [source],
        "DatasetLinks": links,
    }
    if "License" in source_description:
        description["License"] = source_description["License"]
    atomic_write_text(output_dir / "dataset_description.json",
                      json.dumps(description, indent=2) + "\n")
    atomic_write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    rows = ["desc_id\tdescription"] + [f"desc-{k}\t{v}" for k, v in DESCRIPTIONS.items()]
    atomic_write_text(output_dir / "descriptions.tsv", "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- the contract
#: ``from-`` label of each T1 method's images in the method → T1w transform names.
METHOD_KIND = {"vfa": "VFA", "mp2rage": "MP2RAGE"}


@dataclass(frozen=True)
class Output:
    """One derivative file a participant's run writes.

    Attributes
    ----------
    kind : str
        What it is (e.g. ``"T1map"``, ``"R1map_ref"``, ``"Gdconc"``, ``"lesions"``, see
        :func:`expected_outputs`).
    timepoint : str
        Label of its timepoint (:attr:`bids_agquant.plan.Timepoint.label`).
    method : str or None
        T1 method (``"vfa"``, ``"mp2rage"``) for method-specific outputs.
    entities : tuple of (str, str)
        pybids entities of its name (subject, session, ceagent, space, desc, suffix,
        extension, ...), sorted.
    """

    kind: str
    timepoint: str
    method: str | None
    entities: tuple[tuple[str, str], ...]

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.kind, self.timepoint, self.method)

    @property
    def entity_dict(self) -> dict[str, str]:
        return dict(self.entities)

    @property
    def relpath(self) -> str:
        """Path relative to the output dataset's root."""
        return build_derivative_path(self.entity_dict)


def _output(plan, tp, kind: str, method: str | None = None, **entities) -> Output:
    names = {"subject": plan.subject, **tp.entities, **entities}
    names.setdefault("extension", ".nii.gz")
    return Output(kind, tp.label, method, tuple(sorted(names.items())))


def persistence_pairs(plan, config) -> list[tuple[str, object, object]]:
    """``(method, early, late)`` timepoints whose lesion tables are compared: every later
    timepoint of the participant's own agent against the earliest one (by hours after
    injection, else plan order)."""
    from .config import agent_for_timepoint

    agent = plan.agent_parameters
    field_T = plan.field_strength_T(config.field_strength_T)
    same_agent: dict[str, list] = {}
    for tp in plan.posts:
        if agent is None or agent_for_timepoint(tp.ceagent, agent, field_T)[0] is agent:
            for method in plan.methods_for(tp):
                same_agent.setdefault(method, []).append(tp)
    pairs = []
    for method, timepoints in same_agent.items():
        ordered = sorted(timepoints, key=lambda tp: (tp.hours_post_injection is None,
                                                     tp.hours_post_injection or 0.0))
        pairs += [(method, ordered[0], late) for late in ordered[1:]]
    return pairs


def b1_timepoints(plan) -> list:
    """The first timepoint of each session whose B1+ map the app computes from raw
    acquisitions: the session's ``fmap/..._desc-<method>_TB1map`` is written once, under it
    (a B1+ map belongs to the session, not to a ``ce-`` timepoint)."""
    seen, out = set(), []
    for tp in plan.timepoints:
        if tp.b1 is not None and tp.b1.computed and tp.session not in seen:
            seen.add(tp.session)
            out.append(tp)
    return out


def b1_map_uri(plan, timepoint) -> str:
    """BIDS URI of the B1+ map a timepoint's T1 fits use: the computed derivative (this
    dataset) or the raw ``TB1map``; ``"none"`` without one."""
    if timepoint.b1 is None:
        return "none"
    if not timepoint.b1.computed:
        return f"bids:raw:{_raw_relpath(plan, timepoint.b1.files[0])}"
    first = next(tp for tp in b1_timepoints(plan) if tp.session == timepoint.session)
    names = {"subject": plan.subject, "datatype": "fmap", "desc": first.b1.method,
             "suffix": "TB1map", "extension": ".nii.gz",
             **({"session": first.session} if first.session else {})}
    return f"bids::{build_derivative_path(names)}"


def _raw_relpath(plan, path: Path) -> str:
    """``path`` relative to its dataset (from the ``sub-<id>`` folder on)."""
    parts = Path(path).parts
    return Path(*parts[parts.index(f"sub-{plan.subject}"):]).as_posix()


def expected_outputs(plan, config) -> list[Output]:
    """Every derivative the participant workflow writes for ``plan`` (DESIGN.md §5).

    Per session whose B1+ is computed from raw acquisitions, its
    ``fmap/..._desc-<method>_TB1map``. Per timepoint and T1 method: native T1/R1 maps, and
    the method → T1w transform when the timepoint has a T1w. With a baseline T1w (the
    reference space): the baseline R1 in reference space; per post-agent timepoint the
    session → baseline transform, the registered T1w, SE %, and per shared method R1, ΔR1,
    Gd and mass concentration in reference space; with contours, the GTV labels (reference
    and native) and the lesion, control and profile tables, and persistence tables between
    timepoints of one agent.

    Parameters
    ----------
    plan : bids_agquant.plan.ParticipantPlan
    config : bids_agquant.config.RunConfig

    Returns
    -------
    list of Output
        In workflow order; keys (``Output.key``) are unique.
    """
    out: list[Output] = []
    ref = plan.reference_label
    base = plan.baseline
    for tp in b1_timepoints(plan):
        names = {"subject": plan.subject, "datatype": "fmap", "desc": tp.b1.method,
                 "suffix": "TB1map", "extension": ".nii.gz",
                 **({"session": tp.session} if tp.session else {})}
        out.append(Output("TB1map", tp.label, None, tuple(sorted(names.items()))))
    for tp in plan.timepoints:
        for method in tp.methods:
            out += [_output(plan, tp, "T1map", method, desc=method, suffix="T1map"),
                    _output(plan, tp, "R1map", method, desc=method, suffix="R1map")]
            if tp.t1w is not None:
                out.append(_output(plan, tp, "xfm_method", method, suffix="xfm",
                                   extension=".mat", mode="image",
                                   **{"from": METHOD_KIND[method], "to": "T1w"}))
    if base.t1w is None:
        return out
    has_contours = plan.contours is not None
    for method in base.methods:
        out.append(_output(plan, base, "R1map_ref", method, space=ref, desc=method,
                           suffix="R1map"))
    if has_contours:
        out.append(_output(plan, base, "dseg", None, desc="GTV", suffix="dseg"))
    for tp in plan.posts:
        out += [_output(plan, tp, "xfm_session", None, suffix="xfm", extension=".mat",
                        mode="image", **{"from": "orig", "to": ref}),
                _output(plan, tp, "preproc_T1w", None, space=ref, desc="preproc",
                        suffix="T1w"),
                _output(plan, tp, "enhancement", None, space=ref, desc="t1w",
                        suffix="enhancement")]
        if has_contours:
            out += [_output(plan, tp, "dseg_ref", None, space=ref, desc="GTV", suffix="dseg"),
                    _output(plan, tp, "dseg", None, desc="GTV", suffix="dseg")]
        for method in plan.methods_for(tp):
            out += [_output(plan, tp, kind, method, space=ref, desc=method, suffix=suffix)
                    for kind, suffix in (("R1map_ref", "R1map"), ("deltaR1map", "deltaR1map"),
                                         ("Gdconc", "Gdconc"), ("massconc", "massconc"))]
            if has_contours:
                out += [_output(plan, tp, table, method, desc=method, suffix=table,
                                extension=".tsv")
                        for table in ("lesions", "controls", "profiles")]
    if has_contours:
        out += [_output(plan, late, "persistence", method, desc=method, suffix="persistence",
                        extension=".tsv")
                for method, _early, late in persistence_pairs(plan, config)]
    return out
