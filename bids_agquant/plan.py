"""BIDS input → :class:`ParticipantPlan`: what one participant's run will process.

The plan says, for one participant, which images form the baseline timepoint and which form
each post-agent timepoint (DESIGN.md §4), with the acquisition parameters read defensively from
the (inherited) JSON sidecars (:mod:`bids_agquant.sidecars`). Anything required that is missing
raises :class:`~bids_agquant.errors.InputError` naming the file and key; the CLI turns it into
exit code 66 (or 65 for unreadable values).

The run writes the plan it used as ``sub-<id>/log/<run>/plan.json``
(:meth:`ParticipantPlan.to_json`); the report and the output contract read it back
(:meth:`ParticipantPlan.from_json`) instead of finding the inputs again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .config import DEFAULT_BASELINE_SESSION, PLACEBO_NAMES, AgentParameters
from .errors import EX_DATAERR, InputError
from .qmri.mp2rage import DEFAULT_INVERSION_EFFICIENCY, choose_uni_source
from .sidecars import number, number_shots, numbers, required, seconds

LOGGER = logging.getLogger("bids_agquant")


# --------------------------------------------------------------------------- plan objects
@dataclass
class VFASet:
    """Variable-flip-angle spoiled-GRE images of one timepoint, sorted by flip angle."""

    files: list[Path]
    flip_angles_deg: list[float]
    repetition_time_s: float
    field_strength_T: float | None = None


@dataclass
class MP2RAGESet:
    """MP2RAGE images of one timepoint and the sequence parameters of its signal model.

    ``inv1``/``inv2`` are magnitude images, ``inv1_phase``/``inv2_phase`` their phases and
    ``unit1`` the scanner's uniform image (0–4095). Times are in seconds, angles in degrees.
    """

    inv1: Path | None
    inv2: Path | None
    inv1_phase: Path | None
    inv2_phase: Path | None
    unit1: Path | None
    repetition_time_preparation_s: float
    repetition_time_excitation_s: float
    inversion_times_s: tuple[float, float]
    flip_angles_deg: tuple[float, float]
    number_shots: tuple[int, int]  # excitations before / from the k-space centre
    inversion_efficiency: float | None = None  # from the sidecar, when it states one
    field_strength_T: float | None = None
    phase_units: str | None = None
    shots_decision: str = ""
    #: Echo spacing of the INV2 train when it differs from INV1's (MP2RAGE-ME), s.
    repetition_time_excitation_inv2_s: float | None = None

    @property
    def uni_source(self) -> str:
        """How UNI is obtained (:func:`bids_agquant.qmri.mp2rage.choose_uni_source`)."""
        return choose_uni_source(
            has_magnitudes=self.inv1 is not None and self.inv2 is not None,
            has_phases=self.inv1_phase is not None and self.inv2_phase is not None,
            has_unit1=self.unit1 is not None)

    def protocol_fields(self, inversion_efficiency: float | None = None) -> dict:
        """``MP2RAGEProtocol`` fields of this acquisition.

        The inversion efficiency comes from the command line (``inversion_efficiency``), else
        the sidecar, else :data:`~bids_agquant.qmri.mp2rage.DEFAULT_INVERSION_EFFICIENCY`.
        """
        efficiency = (inversion_efficiency or self.inversion_efficiency
                      or DEFAULT_INVERSION_EFFICIENCY)
        return {
            "repetition_time_preparation_s": self.repetition_time_preparation_s,
            "repetition_time_excitation_s": self.repetition_time_excitation_s,
            "inversion_times_s": tuple(self.inversion_times_s),
            "flip_angles_deg": tuple(self.flip_angles_deg),
            "shots_before": self.number_shots[0],
            "shots_after": self.number_shots[1],
            "inversion_efficiency": float(efficiency),
            "repetition_time_excitation_inv2_s": self.repetition_time_excitation_inv2_s,
        }

    @property
    def files(self) -> list[Path]:
        """The images the T1 map is computed from (for ``Sources``)."""
        source = self.uni_source
        if source == "complex":
            return [self.inv1, self.inv1_phase, self.inv2, self.inv2_phase]
        if source == "unit1":
            return [self.unit1]
        return [self.inv1, self.inv2]

    @property
    def registration_image(self) -> Path:
        """INV2 magnitude (proton-density-like, no background noise) or else the UNI image."""
        return self.inv2 or self.unit1


#: BIDS B1+ suffixes (``fmap/``) the app reads, in the order one is chosen when a session has
#: several: a map the site already computed first, then the raw acquisitions.
B1_SUFFIXES = ("TB1map", "TB1TFL", "TB1AFI", "TB1DAM", "TB1SRGE")

#: ``desc-`` label of the B1+ map the app computes from each raw representation.
B1_METHODS = {"TB1TFL": "tfl", "TB1AFI": "afi", "TB1DAM": "dam", "TB1SRGE": "sa2rage"}


@dataclass
class B1Source:
    """The B1+ data of one session, in one BIDS representation, with the sidecar values its
    computation needs (seconds, degrees).

    ``files`` by suffix: ``TB1map`` [map]; ``TB1TFL`` [acq-anat, acq-famp]; ``TB1AFI``
    [acq-tr1, acq-tr2]; ``TB1DAM`` [flip-1 (α), flip-2 (2α)]; ``TB1SRGE`` [first readout,
    second readout] and, when given, their ``part-phase`` images (``units``: their phase
    Units). ``flip_angles_deg``: the nominal flip of the famp preparation pulse
    (TFL), of the AFI excitation, [α, 2α] (DAM), the two readout flips (SRGE), the map's
    own ``FlipAngle`` when its sidecar has one (TB1map). ``repetition_times_s``: [TR1, TR2]
    (AFI), [RepetitionTimePreparation, RepetitionTimeExcitation] (SRGE).
    """

    suffix: str
    files: list[Path]
    units: str | None = None
    flip_angles_deg: list[float] = field(default_factory=list)
    repetition_times_s: list[float] = field(default_factory=list)
    inversion_times_s: list[float] = field(default_factory=list)
    number_shots: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Filled by the pre-flight check: how the map was read, its warnings (a units guess, a
    #: declared unit the values contradict), and the median / coverage found per T1 method.
    decision: str = ""
    warnings: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def method(self) -> str | None:
        """``desc-`` label of the computed map (``tfl``, ``afi``, ``dam``, ``sa2rage``), or
        None for a given ``TB1map``."""
        return B1_METHODS.get(self.suffix)

    @property
    def main_file(self) -> Path:
        """The file messages name: the map, the famp image (TFL), else the first image."""
        return self.files[1] if self.suffix == "TB1TFL" else self.files[0]

    @property
    def computed(self) -> bool:
        """True when the app computes the map from raw acquisitions."""
        return self.suffix != "TB1map"


@dataclass
class Timepoint:
    """A session plus its ``ce-`` entity (DESIGN.md §4)."""

    session: str | None
    ceagent: str | None
    t1w: Path | None
    vfa: VFASet | None
    b1: B1Source | None = None
    hours_post_injection: float | None = None
    mp2rage: MP2RAGESet | None = None

    @property
    def methods(self) -> list[str]:
        """T1 methods this timepoint has data for (``desc-`` labels of their maps)."""
        return [m for m, data in (("vfa", self.vfa), ("mp2rage", self.mp2rage)) if data]

    @property
    def field_strength_T(self) -> float | None:
        for data in (self.vfa, self.mp2rage):
            if data is not None and data.field_strength_T:
                return data.field_strength_T
        return None

    @property
    def label(self) -> str:
        """Entity string identifying the timepoint, e.g. ``ses-D1`` or ``ses-D1_ce-AGuIX``."""
        parts = []
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.ceagent:
            parts.append(f"ce-{self.ceagent}")
        return "_".join(parts) or "baseline"

    @property
    def entities(self) -> dict:
        """The source entities every output of this timepoint keeps (pybids names)."""
        out = {}
        if self.session:
            out["session"] = self.session
        if self.ceagent:
            out["ceagent"] = self.ceagent
        return out

    @property
    def node_suffix(self) -> str:
        """The label made safe for a Nipype node name."""
        return re.sub(r"[^A-Za-z0-9]", "", self.label.replace("ses-", "").replace("ce-", "ce"))


@dataclass
class Contours:
    """Lesion contours of a participant (a label map or a binary mask) and where they live."""

    file: Path
    session: str | None
    ceagent: str | None
    kind: str  # "dseg" (one integer per lesion) or "mask" (lesions = connected components)
    names_tsv: Path | None = None


@dataclass
class ParticipantPlan:
    """Everything the participant workflow needs, resolved from the BIDS dataset."""

    subject: str
    baseline: Timepoint
    posts: list[Timepoint]
    contours: Contours | None
    agent: str | None = None
    dose_mg_per_kg: float | None = None
    weight_kg: float | None = None
    primary_tumor: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The participant's agent constants, resolved by the run (preset, overrides, field).
    agent_parameters: AgentParameters | None = None

    @property
    def is_placebo(self) -> bool:
        return self.agent is not None and self.agent.strip().lower() in PLACEBO_NAMES

    @property
    def reference_label(self) -> str:
        """``space-`` label of the reference (baseline) space."""
        return self.baseline.session or "T1w"

    @property
    def timepoints(self) -> list[Timepoint]:
        """The baseline first, then the post-agent timepoints in plan order."""
        return [self.baseline, *self.posts]

    def is_baseline(self, timepoint: Timepoint) -> bool:
        return timepoint.label == self.baseline.label

    def methods_for(self, timepoint: Timepoint) -> list[str]:
        """T1 methods giving uptake maps for a post-agent timepoint (shared with the baseline)."""
        return [m for m in timepoint.methods if m in self.baseline.methods]

    def field_strength_T(self, default_T: float) -> float:
        """Main field of the baseline acquisitions (their sidecars), else ``default_T``: it
        picks the agent's relaxivity, for the participant and for every ``ce-`` timepoint."""
        return self.baseline.field_strength_T or default_T

    def field_strength_origin(self, default_T: float) -> str:
        """Where :meth:`field_strength_T` comes from, for messages."""
        for data in (self.baseline.vfa, self.baseline.mp2rage):
            if data is not None and data.field_strength_T:
                return (f"MagneticFieldStrength {data.field_strength_T:g} T in the sidecar of "
                        f"{data.files[0].name}")
        return (f"no baseline sidecar states MagneticFieldStrength, so the configured "
                f"{default_T:g} T (field_strength_T) was assumed")

    def timepoint_for_node(self, node_name: str) -> Timepoint | None:
        """The timepoint a Nipype node belongs to, from its dotted name.

        The workflows put the timepoint's :attr:`Timepoint.node_suffix` as one ``_``-separated
        word into the names of its nodes and sub-workflows (``reg_D8_to_ref_wf.register``,
        ``uptake_vfa_D8_wf.uptake`` → ``ses-D8``); participant-level nodes match none.
        """
        by_suffix = {tp.node_suffix: tp for tp in self.timepoints}
        for part in reversed(node_name.split(".")):
            if part.startswith(("sub_", "bids_agquant_")):
                break  # the participant's and the run's own workflows
            for word in reversed(part.split("_")):
                if word in by_suffix:
                    return by_suffix[word]
        return None

    def to_json(self) -> str:
        """The plan as JSON (paths as strings), read back by :meth:`from_json`."""
        return json.dumps(_encode(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ParticipantPlan:
        """Inverse of :meth:`to_json`: the same plan, field for field."""
        return _decode(cls, json.loads(text))


def _encode(value):
    """Dataclasses to dicts, paths to strings, tuples to lists (JSON types only)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(kind, value):
    """``value`` (from :func:`_encode`) back into the annotated type ``kind``."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _decode(options[0], value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is tuple:
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _decode(hints[f.name], value[f.name])
                       for f in dataclasses.fields(kind) if f.name in value})
    if kind is Path:
        return Path(value)
    if kind is float:
        return float(value)
    return value


# --------------------------------------------------------------------------- layout → plan
def load_layout(bids_dir: Path, database_dir: Path | None = None):
    """Index the raw dataset with pybids (no validation: that is the validator's job)."""
    from bids import BIDSLayout

    kwargs = {}
    if database_dir is not None:
        kwargs["database_path"] = str(database_dir)
    return BIDSLayout(str(bids_dir), validate=False, derivatives=False, **kwargs)


def _get(layout, **query) -> list[Path]:
    files = layout.get(return_type="file", extension=[".nii", ".nii.gz"], **query)
    return sorted(Path(f) for f in files)


def _collect_vfa(layout, subject, session, ceagent) -> VFASet | None:
    from bids.layout import Query

    files = _get(layout, subject=subject, session=session or Query.NONE, suffix="VFA",
                 ceagent=ceagent or Query.NONE, datatype="anat")
    if not files:
        return None
    flips, trs, fields = [], [], []
    for path in files:
        meta = layout.get_metadata(str(path))
        flips.append(number(required(meta, "FlipAngle", path), "FlipAngle", path))
        trs.append(seconds(required(meta, "RepetitionTimeExcitation", path),
                            "RepetitionTimeExcitation", path, max_plausible_s=1.0))
        if "MagneticFieldStrength" in meta:
            fields.append(number(meta["MagneticFieldStrength"], "MagneticFieldStrength", path))
    if len(files) < 2:
        raise InputError(f"{files[0]}: a VFA T1 fit needs at least two flip angles, found one")
    if len(set(flips)) < len(flips):
        raise InputError(f"{files[0].parent}: VFA images share a flip angle ({flips}); "
                         "the fit needs distinct angles", EX_DATAERR)
    if max(trs) - min(trs) > 1e-6:
        raise InputError(f"{files[0].parent}: VFA images differ in RepetitionTimeExcitation "
                         f"({trs}); DESPOT1 needs one TR", EX_DATAERR)
    order = sorted(range(len(files)), key=lambda i: flips[i])
    return VFASet(
        files=[files[i] for i in order],
        flip_angles_deg=[flips[i] for i in order],
        repetition_time_s=trs[0],
        field_strength_T=fields[0] if fields else None,
    )


def _collect_mp2rage(layout, subject, session, ceagent) -> MP2RAGESet | None:
    from bids.layout import Query

    common = {"subject": subject, "session": session or Query.NONE,
              "ceagent": ceagent or Query.NONE, "datatype": "anat"}
    images = _get(layout, suffix="MP2RAGE", **common)
    unit1 = _get(layout, suffix="UNIT1", **common)
    if not images and not unit1:
        return None
    found: dict[tuple[int, str], Path] = {}
    echoes: dict[tuple[int, str], dict[int, Path]] = {}
    for path in images:
        ent = layout.parse_file_entities(str(path))
        if "inv" not in ent:
            raise InputError(f"{path}: an MP2RAGE image needs the inv-<1|2> entity", EX_DATAERR)
        part = ent.get("part", "mag")
        if part in ("real", "imag"):
            raise InputError(f"{path}: part-{part} MP2RAGE images are not supported; give the "
                             "magnitude and phase (part-mag / part-phase) of each inversion, or "
                             "the UNIT1 image", EX_DATAERR)
        key = (int(ent["inv"]), "phase" if part == "phase" else "mag")
        if "echo" in ent:  # MP2RAGE-ME: one image per echo of a (multi-echo) readout
            echoes.setdefault(key, {})[int(ent["echo"])] = path
            continue
        if key in found:
            LOGGER.warning("%s: several images for inv-%d %s, using %s", path.parent, key[0],
                           key[1], found[key])
            continue
        found[key] = path
    for key, by_echo in echoes.items():
        if key in found:
            LOGGER.warning("%s: inv-%d %s has images with and without echo-; using %s",
                           found[key].parent, key[0], key[1], found[key].name)
            continue
        found[key] = by_echo[min(by_echo)]
    multi = sorted({k[0] for k, by_echo in echoes.items() if len(by_echo) > 1})
    if multi:
        # The MP2RAGE signal model describes the k-space centre of the first echo (the
        # echo-time dependence cancels in UNI only between equal echo times).
        LOGGER.info("%s: MP2RAGE-ME, inv-%s acquired with several echoes: the first echo of "
                    "each inversion is used", (images or unit1)[0].parent,
                    "/".join(str(i) for i in multi))
    inv1, inv2 = found.get((1, "mag")), found.get((2, "mag"))
    inv1_phase, inv2_phase = found.get((1, "phase")), found.get((2, "phase"))
    folder = (images or unit1)[0].parent
    if not unit1 and not (inv1 and inv2):
        have = ", ".join(p.name for p in images)
        raise InputError(f"{folder}: MP2RAGE needs both inv-1 and inv-2 magnitude images or a "
                         f"UNIT1 image; found only {have}")
    if (inv1_phase is None) != (inv2_phase is None):
        LOGGER.warning("%s: only one MP2RAGE phase image; phases ignored", folder)
        inv1_phase = inv2_phase = None

    # Per-inversion values from the inv-<n> sidecars; else arrays in the UNIT1 sidecar.
    def echo_spacing(value, path) -> list[float]:
        values = value if isinstance(value, list | tuple) else [value]
        return [seconds(v, "RepetitionTimeExcitation", path, max_plausible_s=1.0)
                for v in values]

    if inv1 and inv2:
        metas = [(inv1, layout.get_metadata(str(inv1))), (inv2, layout.get_metadata(str(inv2)))]
        flips = [number(required(m, "FlipAngle", p), "FlipAngle", p) for p, m in metas]
        tis = [seconds(required(m, "InversionTime", p), "InversionTime", p,
                        max_plausible_s=10.0) for p, m in metas]
        source, meta = metas[1]
        # Each readout train has its own echo spacing (MP2RAGE-ME: 32 ms multi-echo INV2).
        spacings = [echo_spacing(required(m, "RepetitionTimeExcitation", p), p)[0]
                    for p, m in metas]
    else:
        source, meta = unit1[0], layout.get_metadata(str(unit1[0]))
        flips = numbers(required(meta, "FlipAngle", source), "FlipAngle", source, 2)
        tis = [seconds(t, "InversionTime", source, max_plausible_s=10.0) for t in
               numbers(required(meta, "InversionTime", source), "InversionTime", source, 2)]
        spacings = echo_spacing(required(meta, "RepetitionTimeExcitation", source), source)
    if len(spacings) not in (1, 2):
        raise InputError(f"{source}: RepetitionTimeExcitation holds {len(spacings)} values; "
                         "one, or one per inversion, is expected", EX_DATAERR)
    tr_exc = spacings[0]
    tr_exc_inv2 = spacings[-1] if abs(spacings[-1] - spacings[0]) > 1e-9 else None
    if tr_exc_inv2 is not None:
        LOGGER.info("%s: RepetitionTimeExcitation %.4g s (inv-1) and %.4g s (inv-2): each "
                    "readout train is modelled with its own echo spacing", source.parent,
                    tr_exc, tr_exc_inv2)
    tr_prep = seconds(required(meta, "RepetitionTimePreparation", source),
                       "RepetitionTimePreparation", source, max_plausible_s=30.0)
    shots, shots_decision = number_shots(meta, source)
    LOGGER.info("%s: %s", source, shots_decision)
    efficiency = None
    if "InversionEfficiency" in meta:
        efficiency = number(meta["InversionEfficiency"], "InversionEfficiency", source)
    field_strength = None
    if "MagneticFieldStrength" in meta:
        field_strength = number(meta["MagneticFieldStrength"], "MagneticFieldStrength", source)
    phase_units = None
    if inv1_phase is not None:
        phase_units = layout.get_metadata(str(inv1_phase)).get("Units")
    return MP2RAGESet(
        inv1=inv1, inv2=inv2, inv1_phase=inv1_phase, inv2_phase=inv2_phase,
        unit1=unit1[0] if unit1 else None,
        repetition_time_preparation_s=tr_prep, repetition_time_excitation_s=tr_exc,
        repetition_time_excitation_inv2_s=tr_exc_inv2, inversion_times_s=(tis[0], tis[1]),
        flip_angles_deg=(flips[0], flips[1]),
        number_shots=shots, inversion_efficiency=efficiency, field_strength_T=field_strength,
        phase_units=phase_units, shots_decision=shots_decision,
    )


def _entity_files(layout, suffix: str, entity: str, prefixes: tuple[str, str],
                  files: list[Path]) -> list[Path] | None:
    """The two files of a raw B1+ pair told apart by ``entity`` (BIDS: ``acq`` values that
    begin with ``anat``/``famp`` or ``tr1``/``tr2``, ``flip`` 1/2), matched on what follows
    the prefix (``acq-anatTest`` + ``acq-fampTest``); None when a member is missing."""
    pairs: dict[str, dict[str, Path]] = {}
    for path in files:
        value = str(layout.parse_file_entities(str(path)).get(entity, ""))
        for prefix in prefixes:
            if value.startswith(prefix):
                pairs.setdefault(value[len(prefix):], {}).setdefault(prefix, path)
    complete = [(rest, pair) for rest, pair in sorted(pairs.items()) if len(pair) == 2]
    if not complete:
        return None
    if len(complete) > 1:
        LOGGER.warning("%s: several %s pairs (%s); using the first", files[0].parent, suffix,
                       ", ".join(repr(rest) for rest, _ in complete))
    return [complete[0][1][prefixes[0]], complete[0][1][prefixes[1]]]


def _srge_shots(meta: dict, source: Path) -> tuple[list[float], str]:
    """SA2RAGE ``NumberShots`` [before, after]; when absent, the BIDS qMRI appendix's
    formula from the phase-encoding keys (BaseResolution · [PF − ½, ½] / iPAT + RefLines/2 ·
    (1 − 1/iPAT))."""
    if "NumberShots" in meta:
        values = numbers(meta["NumberShots"], "NumberShots", source)
        if len(values) == 1:
            return [values[0] / 2, values[0] / 2], (f"NumberShots {values[0]:g} split in "
                                                    "half around the k-space centre")
        if len(values) == 2 and min(values) > 0:
            return values, f"NumberShots {values} taken as [before, after]"
        raise InputError(f"{source}: NumberShots = {meta['NumberShots']!r} must be a positive "
                         "number or [before, after]", EX_DATAERR)
    keys = ("BaseResolution", "PartialFourier", "ParallelReductionFactorInPlane", "RefLinesPE")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise InputError(f"{source}: required sidecar key 'NumberShots' is missing, and it cannot "
                         f"be computed (no {', '.join(missing)}); give NumberShots as [before, "
                         "after] the k-space centre (BIDS qMRI appendix, TB1SRGE notes)")
    base, pf, ipat, ref = (number(meta[k], k, source) for k in keys)
    before = base * (pf - 0.5) / ipat + ref / 2 * (1 - 1 / ipat)
    after = base * 0.5 / ipat + ref / 2 * (1 - 1 / ipat)
    return [before, after], (f"NumberShots computed as [{before:.4g}, {after:.4g}] from "
                             f"BaseResolution {base:g}, PartialFourier {pf:g}, iPAT {ipat:g}, "
                             f"RefLinesPE {ref:g} (BIDS qMRI appendix, TB1SRGE notes)")


def _b1_field_source(layout, images: list[Path]) -> str | None:
    """The ``B1FieldSource`` the T1-mapping images' sidecars name, if any."""
    for path in images:
        value = layout.get_metadata(str(path)).get("B1FieldSource")
        if value:
            return str(value)
    return None


def _b1_identifiers(layout, path: Path) -> set[str]:
    value = layout.get_metadata(str(path)).get("B1FieldIdentifier")
    if isinstance(value, list):
        return {str(v) for v in value}
    return {str(value)} if value else set()


def _collect_b1(layout, subject, session, wanted: str | None = None) -> B1Source | None:
    """The session's B1+ data (``fmap/``), in the first representation of
    :data:`B1_SUFFIXES` it has; the others are named in an INFO line.

    When the T1-mapping images name a ``B1FieldSource``, only the files whose
    ``B1FieldIdentifier`` is that value are candidates (BIDS links B1+ maps to images so).
    """
    from bids.layout import Query

    found = {suffix: _get(layout, subject=subject, session=session or Query.NONE,
                          suffix=suffix, datatype="fmap") for suffix in B1_SUFFIXES}
    if wanted is not None:
        linked = {suffix: [p for p in files if wanted in _b1_identifiers(layout, p)]
                  for suffix, files in found.items()}
        if any(linked.values()):
            found = linked
        elif any(found.values()):
            LOGGER.warning("sub-%s ses-%s: the images name B1FieldSource %r, which no fmap/ "
                           "file declares as its B1FieldIdentifier; B1+ chosen by suffix",
                           subject, session, wanted)
    available = [s for s in B1_SUFFIXES if found[s]]
    for suffix in available:
        source = _b1_source(layout, suffix, found[suffix])
        if source is None:
            continue
        others = [s for s in available if s != suffix]
        if others:
            LOGGER.info("%s: B1+ from %s; %s ignored (rule: a given TB1map first, then TFL, "
                        "AFI, DAM, SA2RAGE)", found[suffix][0].parent, suffix, ", ".join(others))
        return source
    if available:
        names = ", ".join(p.name for s in available for p in found[s])
        raise InputError(f"{found[available[0]][0].parent}: B1+ files ({names}) do not form a "
                         "complete set: TB1TFL needs acq-anat* + acq-famp*, TB1AFI acq-tr1* + "
                         "acq-tr2*, TB1DAM and TB1SRGE flip-1 + flip-2 (BIDS qMRI appendix)")
    return None


def _b1_source(layout, suffix: str, files: list[Path]) -> B1Source | None:
    """One B1+ representation's files and sidecar values; None if the set is incomplete.

    Phase images (``part-phase``) only matter for SA2RAGE, whose first readout changes
    sign; everything else is computed from magnitudes.
    """
    parts = {path: layout.parse_file_entities(str(path)).get("part", "mag") for path in files}
    phases = [p for p in files if parts[p] == "phase"]
    files = [p for p in files if parts[p] not in ("phase", "real", "imag")]
    if not files:
        return None
    meta = {path: layout.get_metadata(str(path)) for path in files}
    if suffix == "TB1map":
        if len(files) > 1:
            LOGGER.warning("%s: several TB1map files, using %s", files[0].parent, files[0].name)
        path = files[0]
        flips = ([number(meta[path]["FlipAngle"], "FlipAngle", path)]
                 if "FlipAngle" in meta[path] else [])
        return B1Source(suffix, [path], units=meta[path].get("Units"), flip_angles_deg=flips)
    if suffix == "TB1TFL":
        pair = _entity_files(layout, suffix, "acquisition", ("anat", "famp"), files)
        if pair is None:
            return None
        famp = pair[1]
        # Siemens tfl_b1map: FlipAngle of the famp series is the preparation pulse's nominal
        # flip, which famp (10 × the achieved flip, degrees) is divided by.
        flip = number(required(meta[famp], "FlipAngle", famp), "FlipAngle", famp)
        return B1Source(suffix, pair, flip_angles_deg=[flip])
    if suffix == "TB1AFI":
        pair = _entity_files(layout, suffix, "acquisition", ("tr1", "tr2"), files)
        if pair is None:
            return None
        trs = []
        for path in pair:
            # The BIDS schema requires RepetitionTimeExcitation (the qMRI appendix's table
            # says RepetitionTime, which converters write too).
            key = next((k for k in ("RepetitionTimeExcitation", "RepetitionTime")
                        if k in meta[path]), "RepetitionTimeExcitation")
            trs.append(seconds(required(meta[path], key, path), key, path, max_plausible_s=1.0))
        flip = number(required(meta[pair[0]], "FlipAngle", pair[0]), "FlipAngle", pair[0])
        if not trs[1] > trs[0]:
            raise InputError(f"{pair[1]}: TB1AFI acq-tr2 must have the longer RepetitionTime "
                             f"(found TR1 {trs[0]:g} s, TR2 {trs[1]:g} s)", EX_DATAERR)
        return B1Source(suffix, pair, flip_angles_deg=[flip], repetition_times_s=trs)
    # TB1DAM and TB1SRGE: flip-1 / flip-2
    by_flip: dict[int, Path] = {}
    for path in files:
        flip_index = layout.parse_file_entities(str(path)).get("flip")
        if flip_index is not None:
            by_flip.setdefault(int(flip_index), path)
    if 1 not in by_flip or 2 not in by_flip:
        return None
    pair = [by_flip[1], by_flip[2]]
    flips = [number(required(meta[p], "FlipAngle", p), "FlipAngle", p) for p in pair]
    if suffix == "TB1DAM":
        if abs(flips[1] - 2 * flips[0]) > 0.01 * flips[1]:
            raise InputError(f"{pair[1]}: TB1DAM needs FlipAngle of flip-2 = 2 × flip-1 (found "
                             f"{flips[0]:g}° and {flips[1]:g}°)", EX_DATAERR)
        return B1Source(suffix, pair, flip_angles_deg=flips)
    first = meta[pair[0]]
    tis = [seconds(required(meta[p], "InversionTime", p), "InversionTime", p,
                   max_plausible_s=10.0) for p in pair]
    tr_prep = seconds(required(first, "RepetitionTimePreparation", pair[0]),
                      "RepetitionTimePreparation", pair[0], max_plausible_s=30.0)
    tr_exc = seconds(required(first, "RepetitionTimeExcitation", pair[0]),
                     "RepetitionTimeExcitation", pair[0], max_plausible_s=1.0)
    shots, decision = _srge_shots(first, pair[0])
    LOGGER.info("%s: %s", pair[0], decision)
    phase_by_flip = {int(layout.parse_file_entities(str(p)).get("flip", 0)): p for p in phases}
    if 1 in phase_by_flip and 2 in phase_by_flip:
        pair += [phase_by_flip[1], phase_by_flip[2]]
    return B1Source(suffix, pair, flip_angles_deg=flips, repetition_times_s=[tr_prep, tr_exc],
                    inversion_times_s=tis, number_shots=shots, notes=[decision],
                    units=(layout.get_metadata(str(pair[2])).get("Units")
                           if len(pair) == 4 else None))


def _scan_hours(bids_dir: Path, subject: str, session: str | None) -> dict[str, float]:
    """``hours_post_injection`` per image from the optional column of ``*_scans.tsv`` (needed
    when pre- and post-agent images share one session)."""
    folder = bids_dir / f"sub-{subject}"
    stem = f"sub-{subject}"
    if session:
        folder, stem = folder / f"ses-{session}", f"{stem}_ses-{session}"
    tsv = folder / f"{stem}_scans.tsv"
    if not tsv.exists():
        return {}
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], dtype={"filename": str})
    if "hours_post_injection" not in table or "filename" not in table:
        return {}
    out = {}
    for name, hours in zip(table["filename"], table["hours_post_injection"], strict=True):
        if pd.notna(hours):
            out[(folder / name).as_posix()] = float(hours)
    return out


def _hours_post_injection(bids_dir: Path, subject: str) -> dict[str, float]:
    tsv = bids_dir / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    if not tsv.exists():
        return {}
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], dtype={"session_id": str})
    if "hours_post_injection" not in table:
        return {}
    out = {}
    for sid, hours in zip(table["session_id"], table["hours_post_injection"], strict=True):
        if pd.notna(hours):
            out[str(sid).removeprefix("ses-")] = float(hours)
    return out


def _participant_metadata(bids_dir: Path, subject: str) -> dict:
    tsv = bids_dir / "participants.tsv"
    if not tsv.exists():
        return {}
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], dtype=str)
    rows = table[table["participant_id"] == f"sub-{subject}"]
    if rows.empty:
        return {}
    row = rows.iloc[0]
    meta = {}
    for key in ("agent", "primary_tumor"):
        if key in row and pd.notna(row[key]):
            meta[key] = str(row[key])
    for key in ("dose_mg_per_kg", "weight_kg"):
        if key in row and pd.notna(row[key]):
            try:
                meta[key] = float(row[key])
            except ValueError:
                raise InputError(f"{tsv}: {key} of sub-{subject} is {row[key]!r}, not a number",
                                 EX_DATAERR) from None
    return meta


def find_contours(contours_dir: Path, subject: str) -> Contours | None:
    """Find a participant's GTV contours (DESIGN.md §4) in a derivatives dataset."""
    from bids.layout import parse_file_entities

    subject_dir = contours_dir / f"sub-{subject}"
    if not subject_dir.is_dir():
        return None
    candidates = sorted(subject_dir.rglob(f"sub-{subject}_*desc-GTV_dseg.nii*"))
    kind = "dseg"
    if not candidates:
        candidates = sorted(subject_dir.rglob(f"sub-{subject}_*label-GTV_mask.nii*"))
        kind = "mask"
    if not candidates:
        return None
    if len(candidates) > 1:
        LOGGER.warning("sub-%s: several contour files, using %s", subject, candidates[0])
    path = candidates[0]
    entities = parse_file_entities(str(path))
    names = Path(re.sub(r"\.nii(\.gz)?$", ".tsv", str(path)))
    return Contours(path, entities.get("session"), entities.get("ceagent"), kind,
                    names if names.exists() else None)


def collect_plan(
    layout,
    subject: str,
    *,
    baseline_session: str = DEFAULT_BASELINE_SESSION,
    session_labels: list[str] | None = None,
    contours_dir: Path | None = None,
) -> ParticipantPlan:
    """Resolve one participant's timepoints, images, parameters and contours.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Index of the raw dataset.
    subject : str
        Participant label without ``sub-``.
    baseline_session : str
        Session label of the baseline (never chosen by sorting labels).
    session_labels : list of str, optional
        Restrict post-agent timepoints to these sessions (the baseline is always kept).
    contours_dir : Path, optional
        Derivatives dataset holding the GTV contours.

    Raises
    ------
    InputError
        A required image or sidecar key is missing or unreadable.
    """
    from bids.layout import Query

    bids_dir = Path(layout.root)
    sessions = layout.get_sessions(subject=subject)
    hours = _hours_post_injection(bids_dir, subject)
    b1_by_session: dict[str | None, B1Source | None] = {}

    def timepoint(session, ceagent) -> Timepoint:
        t1w = _get(layout, subject=subject, session=session or Query.NONE, suffix="T1w",
                   ceagent=ceagent or Query.NONE, datatype="anat")
        if len(t1w) > 1:
            LOGGER.warning("sub-%s %s: several T1w images, using %s", subject, session, t1w[0])
        vfa = _collect_vfa(layout, subject, session, ceagent)
        mp2rage = _collect_mp2rage(layout, subject, session, ceagent)
        if session not in b1_by_session:  # one B1+ per session, shared by its timepoints
            wanted = _b1_field_source(layout, [*(vfa.files if vfa else []),
                                               *(mp2rage.files if mp2rage else [])])
            b1_by_session[session] = _collect_b1(layout, subject, session, wanted)
        tp = Timepoint(session, ceagent, t1w[0] if t1w else None, vfa,
                       b1_by_session[session], hours.get(session or ""), mp2rage)
        # A per-image time (scans.tsv) is more specific than the session's.
        scan_hours = _scan_hours(bids_dir, subject, session)
        for image in [*t1w, *(vfa.files if vfa else []), *(mp2rage.files if mp2rage else [])]:
            if image.as_posix() in scan_hours:
                tp.hours_post_injection = scan_hours[image.as_posix()]
                break
        return tp

    if sessions:
        if baseline_session not in sessions:
            raise InputError(
                f"{bids_dir / f'sub-{subject}'}: baseline session ses-{baseline_session} not found "
                f"(sessions: {', '.join(sorted(sessions))}); set --baseline-session"
            )
        baseline = timepoint(baseline_session, None)
    else:
        baseline = timepoint(None, None)
    where = bids_dir / f"sub-{subject}" / (f"ses-{baseline.session}" if baseline.session else "")
    if not baseline.methods:
        raise InputError(f"{where / 'anat'}: no VFA (*_flip-<n>_VFA) or MP2RAGE (*_inv-<n>_MP2RAGE"
                         ", *_UNIT1) images for the baseline timepoint; T1 mapping is impossible")

    posts = []
    ce_values = layout.get_ceagents(subject=subject) or []
    for session in sessions or [None]:
        if session_labels and session not in session_labels and session != baseline_session:
            continue
        for ceagent in [None, *ce_values]:
            if session == baseline.session and ceagent is None:
                continue
            tp = timepoint(session, ceagent)
            if not tp.methods and tp.t1w is None:
                continue  # nothing acquired for this (session, ce) pair
            where_tp = f"{bids_dir / f'sub-{subject}'} {tp.label}"
            if tp.t1w is None:
                raise InputError(f"{where_tp}: no *_T1w image; a post-agent timepoint needs one "
                                 "(registration to the baseline and signal enhancement)")
            shared = [m for m in tp.methods if m in baseline.methods]
            if not shared:
                have = ", ".join(tp.methods) or "no T1 mapping images"
                raise InputError(f"{where_tp}: has {have}, but the baseline has "
                                 f"{', '.join(baseline.methods)}; ΔR1 needs the same T1 method "
                                 "before and after the agent")
            for method in tp.methods:
                if method not in shared:
                    LOGGER.warning("sub-%s %s: %s images have no baseline counterpart; only "
                                   "native T1 maps are written for them", subject, tp.label,
                                   method)
            posts.append(tp)
    if posts and baseline.t1w is None:
        raise InputError(f"{where / 'anat'}: no *_T1w.nii[.gz] for the baseline timepoint "
                         "(needed as the registration reference of the post-agent timepoints)")

    meta = _participant_metadata(bids_dir, subject)
    contours = find_contours(contours_dir, subject) if contours_dir else None
    # Contours are used in the baseline session's space, or registered through the post-agent
    # timepoint they were drawn on; any other origin has no transform to the reference.
    registrable = {(tp.session, tp.ceagent) for tp in posts}
    if contours is not None and contours.session != baseline.session and (
        (contours.session, contours.ceagent) not in registrable
    ):
        raise InputError(f"{contours.file}: contours belong to ses-{contours.session}, which "
                         "has no processed timepoint to register them through")
    if contours is not None and baseline.t1w is None:
        LOGGER.warning("%s: ignored, the baseline has no T1w image to define the reference space",
                       contours.file)
        contours = None
    plan = ParticipantPlan(subject, baseline, posts, contours, **meta)
    if not posts:
        plan.notes.append("only a baseline timepoint: T1/R1 maps only, nothing to compare")
    if contours is None:
        plan.notes.append("no GTV contours found: maps are written, no lesion tables")
    return plan


