"""Run configuration and contrast-agent presets.

A run is described by one :class:`RunConfig` (what the command line asked for, with defaults
filled in). It is written as TOML next to the crash files of each participant so that a run can
be audited and repeated. Agent presets live in ``data/agents.toml``; :func:`resolve_agent`
turns a preset name (or alias, or a participants.tsv ``agent`` value) plus command-line
overrides into the :class:`AgentParameters` that every concentration map records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

#: Default master seed: registration is reproducible unless the user asks otherwise.
DEFAULT_SEED = 20201

#: Session label of the pre-agent baseline (NanoRad D0); never inferred by sorting labels.
DEFAULT_BASELINE_SESSION = "D0"

#: Main field assumed when no sidecar states MagneticFieldStrength, tesla (both trials: 3 T).
DEFAULT_FIELD_STRENGTH_T = 3.0

#: Agent used for placebo or unknown-agent participants when the command line names none,
#: so that a blinded analysis treats every participant the same way.
DEFAULT_AGENT = "aguix-nanorad"

#: Contours dataset relative to the raw dataset when ``--contours`` is not given.
DEFAULT_CONTOURS_SUBDIR = Path("derivatives") / "contours"

#: Longest diameter (mm) at or above which a lesion is measurable (RECIST 1.1 / RANO-BM).
DEFAULT_MEASURABLE_THRESHOLD_MM = 10.0

#: Dose (mg/kg) that group analyses normalise signal enhancement to (NanoRad's top dose).
DEFAULT_REFERENCE_DOSE_MG_PER_KG = 100.0

#: VFA estimator (``qmri.vfa.VFA_METHODS``): linear DESPOT1, as both trials.
DEFAULT_VFA_FIT = "linear"

#: Top of the report's fixed concentration scale, mg/L (NanoBrainMets: 0.3 mg/ml).
DEFAULT_REPORT_MASS_MAX_MG_PER_L = 300.0

#: Values in participants.tsv ``agent`` meaning "no agent was given" (blinded placebo arm).
PLACEBO_NAMES = frozenset({"placebo", "saline", "none", "n/a", ""})


@dataclass(frozen=True)
class AgentParameters:
    """Constants that turn ΔR1 into concentrations.

    Attributes
    ----------
    name : str
        Preset name (or ``"custom"``).
    r1_per_mM_per_s : float
        Longitudinal relaxivity per Gd ion, 1/(mM s), at ``field_strength_T``.
    gd_per_particle : float
        Gd ions per agent molecule or particle.
    particle_molar_mass_g_per_mol : float
        Molar mass of the agent molecule or particle, g/mol.
    field_strength_T : float
        Field strength the relaxivity applies to, tesla.
    description : str
        Where the values come from.
    substance : str
        The compound, shared by presets that differ only in convention (e.g. both AGuIX
        presets are ``"AGuIX"``); empty for custom constants.
    """

    name: str
    r1_per_mM_per_s: float
    gd_per_particle: float
    particle_molar_mass_g_per_mol: float
    field_strength_T: float
    description: str = ""
    substance: str = ""

    @property
    def mg_per_L_per_mM(self) -> float:
        """Mass concentration (mg/L of agent) equivalent to 1 mM Gd."""
        return self.particle_molar_mass_g_per_mol / self.gd_per_particle

    def as_metadata(self) -> dict:
        """Sidecar fields recording these constants."""
        return {
            "ContrastAgent": self.substance or self.name,
            "ContrastAgentPreset": self.name,
            "Relaxivity": self.r1_per_mM_per_s,
            "RelaxivityUnits": "1/(mM*s), per Gd ion",
            "RelaxivityFieldStrength": self.field_strength_T,
            "GdPerParticle": self.gd_per_particle,
            "ParticleMolarMass": self.particle_molar_mass_g_per_mol,
            "ParticleMolarMassUnits": "g/mol",
        }


def load_agent_presets() -> dict[str, dict]:
    """Read the bundled ``data/agents.toml``."""
    text = resources.files("bids_agquant.data").joinpath("agents.toml").read_text()
    return tomllib.loads(text)


#: Nominal main fields (T). Scanners report their exact field (a Siemens "3 T" Prisma or Skyra
#: says 2.89, a 7 T Terra 6.98): relaxivities are tabulated per nominal field.
NOMINAL_FIELDS_T = (0.55, 1.0, 1.5, 3.0, 4.7, 7.0, 9.4, 10.5, 11.7)


def nominal_field_strength(field_strength_T: float) -> float:
    """The nominal field within 5 % of ``field_strength_T`` (2.89 -> 3, 6.98 -> 7), else the
    value itself."""
    nearest = min(NOMINAL_FIELDS_T, key=lambda f: abs(f - field_strength_T))
    return nearest if abs(nearest - field_strength_T) <= 0.05 * nearest else field_strength_T


def _field_key(field_strength_T: float) -> str:
    return f"{nominal_field_strength(field_strength_T):g}T"


class UnknownAgentError(ValueError):
    """The agent name is no preset or alias."""


class NoRelaxivityError(ValueError):
    """The preset has no cited relaxivity at the acquisition's field strength."""


def _find_preset(name: str, presets: dict[str, dict]) -> tuple[str, dict]:
    """The preset a name or alias (case-insensitive) names, or UnknownAgentError."""
    key = name.strip().lower()
    for preset_name, preset in presets.items():
        if key == preset_name or key in [a.lower() for a in preset.get("aliases", [])]:
            return preset_name, preset
    known = ", ".join(sorted(presets))
    raise UnknownAgentError(f"unknown agent preset {name!r}; known presets: {known}")


def resolve_agent(
    name: str | None,
    *,
    field_strength_T: float = DEFAULT_FIELD_STRENGTH_T,
    r1: float | None = None,
    gd_per_particle: float | None = None,
    molar_mass: float | None = None,
) -> AgentParameters:
    """Build the agent constants from a preset name and optional overrides.

    Parameters
    ----------
    name : str or None
        Preset name or alias (case-insensitive), e.g. ``aguix-nanorad``, ``AGuIX``, ``dotarem``.
        ``None`` with ``r1`` given builds a custom agent.
    field_strength_T : float
        Main field of the acquisition, tesla; picks the relaxivity.
    r1, gd_per_particle, molar_mass : float, optional
        Overrides (1/(mM s), count, g/mol).

    Raises
    ------
    UnknownAgentError
        Unknown preset.
    NoRelaxivityError
        No relaxivity known at this field strength and none given.
    ValueError
        Neither a preset nor ``r1``.
    """
    presets = load_agent_presets()
    if name is None:
        if r1 is None:
            raise ValueError("no agent preset and no --r1 given: cannot convert ΔR1 to mM Gd")
        return AgentParameters(
            "custom", float(r1), float(gd_per_particle or 1), float(molar_mass or 1.0),
            field_strength_T, "user-supplied constants",
        )
    preset_name, preset = _find_preset(name, presets)
    relaxivities = preset["r1_per_mM_per_s"]
    if r1 is None:
        try:
            r1 = relaxivities[_field_key(field_strength_T)]
        except KeyError:
            raise NoRelaxivityError(
                f"agent preset {preset_name!r} has no relaxivity at {field_strength_T:g} T "
                f"(nominal {nominal_field_strength(field_strength_T):g} T) "
                f"(known: {', '.join(relaxivities)}); give --r1"
            ) from None
    return AgentParameters(
        name=preset_name,
        r1_per_mM_per_s=float(r1),
        gd_per_particle=float(gd_per_particle or preset["gd_per_particle"]),
        particle_molar_mass_g_per_mol=float(molar_mass or preset["particle_molar_mass_g_per_mol"]),
        field_strength_T=float(field_strength_T),
        description=preset.get("description", ""),
        substance=preset.get("substance", preset_name),
    )


def agent_for_timepoint(ceagent: str | None, main: AgentParameters,
                        field_strength_T: float) -> tuple[AgentParameters, str]:
    """Agent constants of one timepoint, and why.

    A ``ce-<label>`` that names a preset of another substance than the participant's agent
    (``ce-gadoterate`` images in a NanoRad AGuIX trial) uses that preset. A label naming the
    participant's own substance, or no preset, keeps the participant's agent, with its
    command-line overrides (``ce-AGuIX`` with ``--agent aguix-mp2rage`` stays r1 6.7), and
    constants given without a preset (``--r1`` alone) are always kept.

    Raises
    ------
    NoRelaxivityError
        The label names a preset of another substance that has no relaxivity at
        ``field_strength_T`` (falling back to the participant's agent would be wrong).
    """
    if not ceagent:
        return main, f"participant agent {main.name}"
    if not main.substance:  # constants given on the command line without a preset
        return main, f"ce-{ceagent}: user-supplied constants ({main.name}) kept"
    try:
        preset_name, preset = _find_preset(ceagent, load_agent_presets())
    except UnknownAgentError:
        return main, f"ce-{ceagent} names no preset: participant agent {main.name}"
    if preset.get("substance", preset_name) == main.substance:
        return main, f"ce-{ceagent} is the participant's agent ({main.name})"
    # Another agent: its own relaxivity at this field, or NoRelaxivityError (never the
    # participant's constants in its place).
    other = resolve_agent(preset_name, field_strength_T=field_strength_T)
    return other, f"ce-{ceagent} names the {other.name} preset"


def resolve_participant_agent(participant_agent: str | None, is_placebo: bool,
                              config: RunConfig, field_strength_T: float) -> AgentParameters:
    """The agent constants of one participant.

    The command line's ``--agent`` wins; else the participants.tsv ``agent`` (unless it names
    a placebo); else, when no ``--r1`` gives custom constants, :data:`DEFAULT_AGENT` (a
    blinded analysis treats placebo and treated participants alike). Overrides (``--r1``,
    ``--gd-per-particle``, ``--molar-mass``) apply in every case.

    Raises
    ------
    ValueError
        Unknown preset, or no relaxivity at ``field_strength_T`` and no ``--r1``.
    """
    name = config.agent
    if name is None and participant_agent and not is_placebo:
        name = participant_agent
    if name is None and config.r1 is None:
        name = DEFAULT_AGENT
    return resolve_agent(name, field_strength_T=field_strength_T, r1=config.r1,
                         gd_per_particle=config.gd_per_particle, molar_mass=config.molar_mass)


def load_registration_parameters(sloppy: bool = False, voxel_size_mm: float = 1.0) -> dict:
    """antspyx ``registration`` keyword arguments for images of ``voxel_size_mm``.

    The parameter files (``data/registration_{precise,sloppy}.json``) give the multi-resolution
    pyramid in millimetres; here each level becomes an integer shrink factor (at least 1) for
    the actual voxel size, with Gaussian smoothing given in mm.
    """
    fname = "registration_sloppy.json" if sloppy else "registration_precise.json"
    spec = json.loads(resources.files("bids_agquant.data").joinpath(fname).read_text())
    shrink = [max(1, round(level / voxel_size_mm)) for level in spec["levels_mm"]]
    return {
        "type_of_transform": spec["type_of_transform"],
        "aff_metric": spec["metric"],
        "aff_sampling": spec["histogram_bins"],
        "aff_random_sampling_rate": spec["random_sampling_rate"],
        "aff_iterations": tuple(spec["iterations"]),
        "aff_shrink_factors": tuple(shrink),
        "aff_smoothing_sigmas": tuple(spec["smoothing_sigmas_mm"]),
        "smoothing_in_mm": True,
    }


@dataclass
class RunConfig:
    """Everything a run was asked to do (command line plus defaults).

    Every default of the app lives here once: the command-line parser takes its defaults
    from ``RunConfig()``, and the run writes the filled-in configuration as TOML
    (``sub-<id>/log/<run>/bids_agquant.toml``) that the reports read back.
    """

    bids_dir: Path = Path(".")
    output_dir: Path = Path("derivatives")
    analysis_level: str = "participant"
    work_dir: Path = Path("work")
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    baseline_session: str = DEFAULT_BASELINE_SESSION
    #: ``None`` means ``bids_dir / DEFAULT_CONTOURS_SUBDIR`` (filled in by ``__post_init__``).
    contours_dir: Path | None = None
    field_strength_T: float = DEFAULT_FIELD_STRENGTH_T
    nprocs: int = field(default_factory=lambda: os.cpu_count() or 1)
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    random_seed: int = DEFAULT_SEED
    sloppy: bool = False
    agent: str | None = None
    r1: float | None = None
    gd_per_particle: float | None = None
    molar_mass: float | None = None
    measurable_threshold_mm: float = DEFAULT_MEASURABLE_THRESHOLD_MM
    reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG
    vfa_fit: str = DEFAULT_VFA_FIT
    inversion_efficiency: float | None = None
    #: Units of every given TB1map (``--b1-units``), overriding the sidecar and the values.
    b1_units: str | None = None
    report_mass_max_mg_per_l: float = DEFAULT_REPORT_MASS_MAX_MG_PER_L
    run_uuid: str = ""

    def __post_init__(self) -> None:
        if self.contours_dir is None:
            self.contours_dir = Path(self.bids_dir) / DEFAULT_CONTOURS_SUBDIR

    def to_toml(self) -> str:
        """Serialise as TOML (flat table; paths as strings, ``None`` omitted)."""
        lines = ["[run]"]
        for key, value in dataclasses.asdict(self).items():
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> RunConfig:
        """Inverse of :meth:`to_toml`."""
        data = tomllib.loads(text)["run"]
        for key in ("bids_dir", "output_dir", "work_dir", "contours_dir"):
            if key in data:
                data[key] = Path(data[key])
        return cls(**data)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escaping is valid TOML basic-string escaping
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
