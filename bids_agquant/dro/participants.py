"""Participants of the DRO: roles (agent, dose, design, methods), timepoints, lesions, head
poses, coil directions and acquisition times, all drawn from the participant's generator."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from .anatomy import _Anatomy, _random_motion, _unit_vector
from .constants import (
    AGENT_DOSES_EXTRA_MG_PER_KG,
    B1_TILT_RANGE,
    BASELINE_SESSION,
    INTER_ROT_DEG,
    INTER_TRANS_MM,
    INTRA_ROT_DEG,
    INTRA_TRANS_MM,
    PIVOT_RADIUS_MM,
    PRIMARY_TUMORS,
    RAW_B1_FORMATS,
    SAME_SESSION_CE,
    SAME_SESSION_HOURS,
    SESSIONS,
    WEIGHT_RANGE_KG,
)
from .lesions import _Lesion, _place_lesions


@dataclass(frozen=True)
class _Role:
    agent: str
    dose_mg_per_kg: float
    b1_units: str | None  # TB1map units: None (no map or a raw format), "fraction", "percent"
    design: str = "sessions"  # "sessions" (D0/D1/D8) or "same-session" (D0 + D0 ce-AGuIX)
    methods: tuple[str, ...] = ("vfa",)
    phase_units: str | None = None  # MP2RAGE phase: "rad" or "siemens" (-4096..4095)
    #: Raw B1+ representation (``dro.b1.RAW_B1_FORMATS``) instead of a TB1map, if any.
    raw_b1: str | None = None

    @property
    def b1_format(self) -> str | None:
        """BIDS suffix of the participant's B1+ files, or None without B1+."""
        return self.raw_b1 or ("TB1map" if self.b1_units else None)


@dataclass(frozen=True)
class _Timepoint:
    key: str  # "D1", or "D0_ce-AGuIX" for a post-agent timepoint inside the D0 session
    session: str
    ceagent: str | None

    @property
    def label(self) -> str:
        """BIDS entity string (the pipeline's ``timepoint`` column), e.g. ``ses-D1``."""
        return f"ses-{self.session}" + (f"_ce-{self.ceagent}" if self.ceagent else "")


@dataclass
class _Participant:
    label: str
    role: _Role
    weight_kg: float
    primary_tumor: str
    lesions: list[_Lesion]
    timepoints: list[_Timepoint]
    poses: dict[str, dict[str, np.ndarray]]  # timepoint key -> image kind -> 4x4
    motion: dict[str, dict[str, dict[str, object]]]
    rx_direction: dict[str, np.ndarray]
    b1_tilt: float
    acq_time: dict[str, str]  # timepoint key -> ISO time
    hours_post_injection: dict[str, float | None]  # timepoint key -> hours
    c0_mM: dict[int, float]  # D1 peak concentration per lesion label

    @property
    def agent(self) -> str:
        return self.role.agent

    @property
    def dose_mg_per_kg(self) -> float:
        return self.role.dose_mg_per_kg

    @property
    def b1_units(self) -> str | None:
        return self.role.b1_units

    @property
    def b1_format(self) -> str | None:
        return self.role.b1_format

    @property
    def kinds(self) -> tuple[str, ...]:
        """Image kinds acquired at every timepoint (besides the T1w)."""
        return tuple({"vfa": "VFA", "mp2rage": "MP2RAGE"}[m] for m in self.role.methods)


def _participant_roles(n: int) -> list[_Role]:
    """Roles of subjects 1..n (see the package docstring, "Participants")."""
    roles = []
    for idx in range(1, n + 1):
        if n >= 2 and idx == n:
            roles.append(_Role("placebo", 0.0, None))
        elif idx == 1:
            roles.append(_Role("AGuIX", 100.0, "fraction", methods=("vfa", "mp2rage"),
                               phase_units="rad"))
        elif idx == 2:
            roles.append(_Role("AGuIX", 50.0, "percent", design="same-session",
                               methods=("mp2rage",), phase_units="siemens"))
        else:
            # Extra participants: first one per raw B1+ representation, then TB1maps.
            dose = AGENT_DOSES_EXTRA_MG_PER_KG[(idx - 3) % len(AGENT_DOSES_EXTRA_MG_PER_KG)]
            if idx - 3 < len(RAW_B1_FORMATS):
                roles.append(_Role("AGuIX", dose, None, raw_b1=RAW_B1_FORMATS[idx - 3]))
            else:
                roles.append(_Role("AGuIX", dose, "fraction" if idx % 2 == 1 else "percent"))
    return roles


def _timepoints(design: str) -> list[_Timepoint]:
    if design == "same-session":
        return [_Timepoint(BASELINE_SESSION, BASELINE_SESSION, None),
                _Timepoint(f"{BASELINE_SESSION}_ce-{SAME_SESSION_CE}", BASELINE_SESSION,
                           SAME_SESSION_CE)]
    return [_Timepoint(ses, ses, None) for ses in SESSIONS]


def _make_participant(idx: int, role: _Role, rng: np.random.Generator,
                      anat: _Anatomy) -> _Participant:
    label = f"{idx:02d}"
    weight = round(float(rng.uniform(*WEIGHT_RANGE_KG)), 1)
    tumor = PRIMARY_TUMORS[int(rng.integers(len(PRIMARY_TUMORS)))]
    lesions = _place_lesions(rng, anat, role.agent == "placebo", role.dose_mg_per_kg)
    timepoints = _timepoints(role.design)
    kinds = tuple({"vfa": "VFA", "mp2rage": "MP2RAGE"}[m] for m in role.methods)

    poses: dict[str, dict[str, np.ndarray]] = {}
    motion: dict[str, dict[str, dict[str, object]]] = {}
    centre = anat.centroid_mm
    for tp in timepoints:
        if tp.key == BASELINE_SESSION:
            p_t1w = np.eye(4)
            inter = {"rotation_deg": 0.0, "translation_mm": [0.0, 0.0, 0.0]}
        else:  # a new session, or the patient back on the table after the infusion
            p_t1w, inter = _random_motion(rng, INTER_ROT_DEG, INTER_TRANS_MM, centre,
                                          PIVOT_RADIUS_MM)
        head_centre = (p_t1w @ np.append(centre, 1.0))[:3]
        poses[tp.key] = {"T1w": p_t1w}
        motion[tp.key] = {"T1w": inter}
        for kind in kinds:
            intra_mat, intra = _random_motion(rng, INTRA_ROT_DEG, INTRA_TRANS_MM, head_centre,
                                              5.0)
            poses[tp.key][kind] = intra_mat @ p_t1w
            motion[tp.key][f"{kind}_relative_to_T1w"] = intra

    base_dir = _unit_vector(rng) * rng.uniform(0.5, 1.0)
    rx = {tp.key: base_dir + rng.normal(0.0, 0.1, size=3) for tp in timepoints}
    tilt = float(rng.uniform(*B1_TILT_RANGE))

    injection = _dt.datetime(2020, 1, 6, 9, 0, 0) + _dt.timedelta(
        days=7 * (idx - 1) + int(rng.integers(0, 5)), minutes=int(rng.integers(0, 120))
    )
    if role.design == "same-session":
        hours = {tp.key: (SAME_SESSION_HOURS if tp.ceagent else None) for tp in timepoints}
        offsets = {tp.key: (SAME_SESSION_HOURS if tp.ceagent else -0.5) for tp in timepoints}
    else:
        hours_d8 = round(168.0 + float(rng.uniform(-3.0, 3.0)), 1)
        hours = {"D0": None, "D1": 2.0, "D8": hours_d8}
        offsets = {"D0": -24.0, "D1": 2.0, "D8": hours_d8}
    acq = {key: (injection + _dt.timedelta(hours=h)).replace(microsecond=0).isoformat()
           for key, h in offsets.items()}
    return _Participant(label, role, weight, tumor, lesions, timepoints, poses, motion, rx,
                        tilt, acq, hours, {})
