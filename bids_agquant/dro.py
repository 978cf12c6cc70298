"""Digital reference object (DRO): a synthetic BIDS trial with known truth.

:func:`make_dataset` writes a small NanoRad-like trial (sessions ``D0`` baseline, ``D1``
2 h after the agent, ``D8`` one week later) as a raw BIDS dataset with a contours
derivatives dataset, and writes the ground truth *outside* the raw dataset.

Anatomy
-------
The anatomy is nilearn's bundled MNI152 (2009c nonlinear symmetric) template, which loads
offline: grey- and white-matter probability maps (``load_mni152_gm_template`` /
``load_mni152_wm_template``) and the brain mask (``load_mni152_brain_mask``), all at 1 mm.
The CSF fraction is the remainder of a softened brain mask,
``f_CSF = clip(G_1mm * brainmask - f_GM - f_WM, 0, 1)`` (``G_1mm``: Gaussian smoothing with
sigma = 1 mm, so that the brain border is a partial-volume ramp and not a step).  Everything
outside the brain (skull, scalp, air) has proton density 0: the template is skull-stripped
and no head is modelled.  Tissue fractions at arbitrary physical points are obtained by
trilinear interpolation of the 1 mm maps.

Coordinate conventions
----------------------
*Object space* is the anatomy's own world space, i.e. MNI152 RAS millimetres.  Every image of
every session is written on the **same scanner grid**: the affine and shape of
``nilearn.datasets.load_mni152_template(resolution=resolution_mm)`` (honest affines; the
grid does not move).  The *head* moves instead: every image kind ``k`` in ``{"T1w", "VFA"}``
of every session ``s`` has a rigid head pose ``P[s][k]``, a 4x4 matrix mapping object RAS mm
to scanner RAS mm.

* ``P["D0"]["T1w"]`` is the identity, so the reference space (the D0 T1w grid) coincides
  with object space, and every ``space-D0`` truth map is simply the truth evaluated on the
  scanner grid.
* Every other session's T1w pose is a random rigid motion: a rotation of 4-8 degrees about a
  random axis through a point within 10 mm of the brain centroid, followed by a translation
  of norm 4-8 mm.
* Every VFA pose (D0 included) is the session's T1w pose followed by a small intra-session
  motion (rotation 0.5-1.5 degrees about a point near the head centre, translation
  0.5-1.5 mm), so VFA -> T1w registration is needed in every session.

Images are synthesised by mapping each voxel centre ``y`` (scanner) to object coordinates
``x = P^-1 y`` and evaluating the parametric maps there: analytically for the lesions and for
the B1+ field, by trilinear interpolation of the 1 mm maps for the tissue fractions.  The
truth is therefore never blurred by a resampling step.

The poses are written to ``truth_dir/transforms.json`` as
``{"sub-01": {"D0": {"T1w": [[4x4]], "VFA": [[4x4]]}, "D1": ...}, ...}``.  An ANTs
registration with *fixed* = D0 T1w and *moving* = session ``s`` T1w estimates the point map
(fixed physical point -> moving physical point) ``x -> P[s]["T1w"] @ x``; a registration with
fixed = session T1w and moving = session VFA estimates ``P[s]["VFA"] @ inv(P[s]["T1w"])``.
(ANTs/ITK work in LPS; convert with ``diag(-1, -1, 1, 1)`` on both sides.)

Physical model
--------------
Tissue values at 3 T (all documented again in ``truth.json``):

* T1: white matter 0.83 s, grey matter 1.33 s (Wansapura et al., JMRI 9:531-538, 1999:
  832 ms and 1331 ms at 3 T), CSF 4.2 s (Lu et al., JMRI 22:13-22, 2005: about 4.16 s at 3 T).
* Relative proton density (water content): WM 0.69, GM 0.80, CSF 1.0 (typical brain water
  contents, e.g. Tofts (ed.), *Quantitative MRI of the Brain*, Wiley 2003, ch. 4; Whittall et
  al., MRM 37:34-43, 1997).
* Partial volume: ``R1 = sum_i f_i R1_i / sum_i f_i`` (fraction-weighted relaxation rate,
  fast exchange) and ``M0 = sum_i f_i M0_i`` (so M0 fades to 0 outside the brain).
* Lesions (brain metastases): baseline T1 uniform in [1.3, 1.7] s (prolonged relative to
  WM, as usual for oedematous metastases at 3 T), relative proton density 0.85.  A lesion
  replaces the tissue it occupies: with lesion fraction ``f_L`` the tissue fractions are
  scaled by ``1 - f_L``.
* Agent: AGuIX, longitudinal relaxivity r1 = 8.9 mM^-1 s^-1 per Gd at 3 T (NanoRad
  convention, Verry et al., Sci. Adv. 2020; preset ``aguix-nanorad``), fast-exchange
  ``R1_post = R1_pre + r1 * C``.  Normal tissue has no uptake at any session; the placebo
  participant has ``C = 0`` everywhere.
* Lesion shape: ellipsoid ``rho(x) = ||diag(1/a) R^T (x - c)||``; membership has a smooth
  edge ``f_L = 0.5 erfc((rho - 1) R_eq / (sqrt(2) w))`` with w = 1.0 mm: real tumour borders
  are not step functions, and a smooth edge also keeps the partial-volume bias of later
  resampling (registration to D0) small.  The GTV contour is the set of D0-grid voxels with
  ``rho <= 1``.
* Concentration patterns (``rho`` clipped to 1 inside the pattern, then multiplied by
  ``f_L``): ``homogeneous`` ``C0``; ``rim`` (central minimum) ``C0 (0.25 + 0.75 rho^2)``;
  ``central_max`` ``C0 (1 - 0.75 rho^2)``.  ``C0`` at D1 is set so that the mean
  concentration over the GTV equals a target drawn from
  ``0.03 + 0.12 (dose / 100 mg/kg) U(0.6, 1.0)`` mM (always within 0.03-0.15 mM);
  D8 = D1 x U(0.10, 0.20) per lesion; D0 = 0.
* Spoiled gradient echo (SPGR) steady state
  ``S = s0 * b_rx * M0 * sin(k a) (1 - E1) / (1 - E1 cos(k a))``, ``E1 = exp(-TR/T1)``,
  ``k`` = B1+ fraction of nominal, ``b_rx`` = receive sensitivity, ``s0`` = 1000 (arbitrary
  scanner units).  T2* decay at TE = 2.5 ms is neglected (absorbed in M0).
* B1+ (transmit) field ``k(x)``: at 3 T the dielectric pattern is set by the head itself, so
  it is fixed in *object* coordinates and identical in every session (evaluated through each
  image's pose): central brightening
  ``k = 0.72 + 0.50 exp(-q/2) + g x_R / 70 mm``, ``q = sum(((x - c_B1) / s)^2)``,
  ``c_B1 = (0, -18, 12)`` mm, ``s = (55, 65, 45)`` mm, left-right tilt ``g`` in
  [-0.02, 0.02] per participant; about 0.80-1.22 inside the brain.
* Receive bias ``b_rx``: smooth, fixed in *scanner* coordinates (the coil),
  ``1 + 0.15 tanh(d . (y - y_c) / 80 mm)``, so always within +-15 %; direction ``d`` drawn
  per participant, with a small per-session perturbation.
* Acquisition: T1w = 3-D spoiled GRE, flip 20 deg, TR 10 ms, TE 2.5 ms; VFA = 3-D SPGR, flip
  2/5/10/15 deg, TR 15 ms, TE 2.5 ms; B1+ map (``fmap/*_TB1map``) on the VFA pose, noise-free.
* Noise: complex Gaussian with standard deviation ``sigma`` per channel, magnitude images
  (Rician).  **SNR definition:** ``sigma = mean WM signal of the VFA image with the highest
  mean WM signal / snr``, where WM = voxels with white-matter fraction >= 0.9 and no lesion
  (lesion fraction < 0.01); one ``sigma`` for every image (T1w and VFA) of a session.
  ``snr=float("inf")`` gives noise-free images.

* MP2RAGE (``MP2RAGE_PROTOCOL``: TR_prep 5 s, echo spacing 7.1 ms, TI 0.7/2.5 s, flip 4/5
  deg, NumberShots [44, 88], inversion efficiency 0.96): signed steady-state signals of
  :func:`bids_agquant.qmri.mp2rage.mp2rage_signals` times ``s0 * b_rx * M0``, multiplied by a
  background phase shared by both inversions (``0.7 rad + 2 pi (d . y) / 150 mm``, wrapping,
  scanner-fixed) plus complex Gaussian noise with its own ``sigma = mean WM |INV2| / snr``.
  Written as ``inv-<1|2>_part-<mag|phase>_MP2RAGE`` (phase in radians, or on the Siemens
  -4096..4095 scale with ``Units`` "arbitrary") and the scanner-style ``UNIT1`` =
  ``round(4095 (UNI + 0.5))`` computed from the noisy complex images. Constant parameters
  are in the top-level ``MP2RAGE.json`` (inherited), FlipAngle/InversionTime per file.
  Each MP2RAGE acquisition has its own small intra-session motion (pose kind ``MP2RAGE``).

Participants
------------
``sub-01``: AGuIX 100 mg/kg, sessions D0/D1/D8 with VFA **and** MP2RAGE (phase in radians),
B1+ map in fraction units.  ``sub-02`` (when there are three or more participants): the
NanoBrainMets same-session design — AGuIX 50 mg/kg, one session ``D0`` holding the pre-agent
images and, 2 h after the agent, the post-agent images tagged ``ce-AGuIX`` (their times in
``sub-02_ses-D0_scans.tsv``), MP2RAGE only (phase on the Siemens scale), B1+ map in percent
(one per session, on the pre-agent pose).  The *last* participant is always the placebo (agent
``placebo``, ``dose_mg_per_kg`` 0), VFA only, and has no B1+ map.  Extra participants
(``participants > 3``, D0/D1/D8 with VFA only) cycle
AGuIX doses 15, 30, 75 mg/kg, with B1+ maps alternating fraction/percent.  Why every treated
participant has a map: without B1+ correction a VFA fit scales R1, and therefore ΔR1, by about
κ² (−19 % at κ = 0.9), a real bias of the method that a quantitative trial avoids by acquiring
a B1+ map; the placebo (ΔR1 = 0, nothing to scale) exercises the no-map path.  With
``participants=1`` the only participant is ``sub-01``; with ``participants=2`` it is sub-01
plus a placebo.  Each participant gets its own ``numpy`` generator spawned from
``SeedSequence(seed)``, so ``sub-01`` is identical whatever the number of participants.

Every participant has exactly three lesions, one per concentration pattern: one
non-measurable (equivalent diameter 7.0-8.5 mm, longest diameter < 10 mm) and two of
17-29 mm, placed at candidate sites in cerebral white/grey matter, fully inside the brain mask
and at least 5 mm apart (surface to surface).

Output layout
-------------
Raw BIDS (``path``)::

    dataset_description.json  README.md  participants.tsv/.json  sessions.json
    T1w.json  VFA.json  TB1map.json               (acquisition constants, inherited)
    sub-XX/sub-XX_sessions.tsv
    sub-XX/ses-D0|D1|D8/anat/sub-XX_ses-YY_T1w.nii.gz (+ .json)
    sub-XX/ses-YY/anat/sub-XX_ses-YY_flip-{1,2,3,4}_VFA.nii.gz (+ .json)
    sub-XX/ses-YY/anat/sub-XX_ses-YY[_ce-AGuIX]_inv-{1,2}_part-{mag,phase}_MP2RAGE.nii.gz
    sub-XX/ses-YY/anat/sub-XX_ses-YY[_ce-AGuIX]_UNIT1.nii.gz     (MP2RAGE participants)
    sub-XX/ses-YY/fmap/sub-XX_ses-YY_TB1map.nii.gz (+ .json)     (participants with B1)
    sub-02/ses-D0/sub-02_ses-D0_scans.tsv                          (same-session design)
    derivatives/contours/sub-XX/ses-D0/anat/sub-XX_ses-D0_desc-GTV_dseg.nii.gz (+ .tsv, .json)

Truth (``truth_dir``, by default ``<path>_truth`` next to ``path``)::

    truth.json  transforms.json  lesions.tsv
    sub-XX/sub-XX_space-D0_desc-brain_mask.nii.gz
    sub-XX/ses-YY/sub-XX_ses-YY_space-D0_Gdconc.nii.gz   (mM Gd)
    sub-XX/ses-YY/sub-XX_ses-YY_space-D0_T1map.nii.gz    (s)
    sub-XX/ses-YY/sub-XX_ses-YY_space-D0_R1map.nii.gz    (1/s)
    sub-XX/ses-YY/sub-XX_ses-YY_space-VFA_B1map.nii.gz   (fraction, native VFA pose)
    sub-XX/ses-YY/sub-XX_ses-YY_space-VFA_T1map.nii.gz   (s, native VFA pose)
    sub-XX/ses-YY/sub-XX_ses-YY_space-VFA_M0map.nii.gz   (apparent M0 = s0 b_rx M0, a.u.)
    sub-XX/ses-YY/sub-XX_ses-YY_space-MP2RAGE_{B1map,T1map,M0map}.nii.gz   (MP2RAGE pose)

A same-session post-agent timepoint uses ``ses-D0_ce-AGuIX`` in these names; its key in
``transforms.json`` and ``truth.json`` is ``D0_ce-AGuIX``.

With the native (``space-VFA``) maps, the noise-free VFA signal is exactly
``M0map * sin(B1 a) (1 - E1) / (1 - E1 cos(B1 a))``, ``E1 = exp(-TR / T1map)``.
T1/R1 truth maps are 0 where no tissue is present (outside the brain).  The brain mask is
``total tissue + lesion fraction >= 0.5`` on the D0 grid.

``lesions.tsv`` has one row per participant x timepoint x lesion: ``participant_id``,
``session``, ``ceagent`` (n/a, or ``AGuIX`` for the same-session post-agent timepoint),
``timepoint`` (``ses-D1``, ``ses-D0_ce-AGuIX``: the pipeline's timepoint label),
``lesion_id`` (the contour label), ``name`` (``GTV<n>``), ``pattern``, ``agent``,
``dose_mg_per_kg``, ``hours_post_injection``, ``center_{x,y,z}_mm`` (object = D0 space),
``semi_axis_{1,2,3}_mm`` and ``nominal_diameter_mm`` (``2 (abc)^(1/3)``), then from the GTV
voxels of the D0 grid ``n_voxels``, ``volume_ml``, ``equiv_diameter_mm`` ((6V/pi)^(1/3)),
``longest_diameter_mm`` (maximum Feret diameter over voxel centres), ``measurable``
(longest >= 10 mm), ``gd_mM_mean`` / ``gd_mM_median`` (true concentration at the voxel
centres), ``gd_peak_mM`` (``C0`` of the session), ``t1_lesion_nominal_s`` (the lesion's own
T1, before partial volume with its surroundings), ``t1_baseline_s_mean`` and ``t1_s_mean``
(true T1 in the GTV at D0 and at the session; lower than nominal near the border, where the
erf edge mixes in tissue) and ``deltaR1_mean`` (1/s, = r1 x ``gd_mM_mean``).

Performance: two threads write the gzipped NIfTI files while the next images are computed
(zlib releases the GIL) and the three tissue maps are interpolated in parallel; the 1 mm
anatomy is cached per process (about 110 MB).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from scipy.special import erfc

from bids_agquant import __version__

__all__ = [
    "DRO",
    "make_dataset",
    "SESSIONS",
    "BASELINE_SESSION",
    "T1_S",
    "M0_REL",
    "R1_AGUIX_PER_MM_PER_S",
    "VFA_FLIP_DEG",
    "VFA_TR_S",
    "T1W_FLIP_DEG",
    "T1W_TR_S",
    "TE_S",
]

# --------------------------------------------------------------------------------------
# Physical and acquisition constants (sources in the module docstring)
# --------------------------------------------------------------------------------------

#: Session labels, in acquisition order.
SESSIONS: tuple[str, ...] = ("D0", "D1", "D8")
#: Baseline (pre-agent) session; its T1w pose is the identity.
BASELINE_SESSION = "D0"

#: Tissue T1 at 3 T in seconds: WM/GM from Wansapura et al. JMRI 1999, CSF from Lu et al.
#: JMRI 2005.
T1_S: dict[str, float] = {"WM": 0.83, "GM": 1.33, "CSF": 4.2}
#: Relative proton density (water content; Tofts 2003, Whittall et al. 1997).
M0_REL: dict[str, float] = {"WM": 0.69, "GM": 0.80, "CSF": 1.0}
#: Lesion relative proton density.
LESION_M0_REL = 0.85
#: Range of the baseline lesion T1 in seconds (uniform draw per lesion).
LESION_T1_RANGE_S = (1.3, 1.7)
#: Width (standard deviation) of the error-function lesion edge, in mm.
EDGE_WIDTH_MM = 1.0
#: Longitudinal relaxivity of AGuIX per Gd at 3 T in 1/(mM s) (NanoRad, Verry et al. 2020).
R1_AGUIX_PER_MM_PER_S = 8.9
#: Magnetic field strength in tesla.
FIELD_STRENGTH_T = 3.0
#: Scale of the signal equation (arbitrary scanner units for M0 = 1, b_rx = 1).
SIGNAL_SCALE = 1000.0

#: VFA flip angles (degrees), repetition and echo times (seconds).
VFA_FLIP_DEG: tuple[float, ...] = (2.0, 5.0, 10.0, 15.0)
VFA_TR_S = 0.015
#: T1-weighted 3-D spoiled GRE flip angle (degrees) and repetition time (seconds).
T1W_FLIP_DEG = 20.0
T1W_TR_S = 0.010
#: Echo time of every acquisition, seconds.
TE_S = 0.0025

#: Concentration patterns, one per lesion.
PATTERNS: tuple[str, ...] = ("homogeneous", "rim", "central_max")
#: Target D1 mean GTV concentration: 0.03 + 0.12 * (dose / 100 mg/kg) * U(0.6, 1.0) mM.
GD_MEAN_BASE_MM = 0.03
GD_MEAN_SPAN_MM = 0.12
GD_MEAN_RANGE_MM = (0.03, 0.15)
#: D8 / D1 concentration ratio range (uniform per lesion).
D8_FACTOR_RANGE = (0.10, 0.20)

#: Nominal equivalent diameters (mm): one non-measurable and two large lesions.
SMALL_DIAMETER_RANGE_MM = (7.0, 8.5)
LARGE_DIAMETER_RANGE_MM = (17.0, 29.0)
#: Axis-ratio ranges of the (mildly) ellipsoidal lesions.
SMALL_AXIS_RATIO_RANGE = (0.92, 1.08)
LARGE_AXIS_RATIO_RANGE = (0.85, 1.15)
#: Minimal surface-to-surface gap between lesions (mm).
LESION_GAP_MM = 5.0
#: Candidate lesion sites (MNI mm): cerebral white matter / grey-white junction.
CANDIDATE_SITES_MM: tuple[tuple[float, float, float], ...] = (
    (26.0, 22.0, 22.0), (-26.0, 22.0, 22.0),
    (28.0, -12.0, 30.0), (-28.0, -12.0, 30.0),
    (30.0, -48.0, 30.0), (-30.0, -48.0, 30.0),
    (36.0, -18.0, -6.0), (-36.0, -18.0, -6.0),
    (20.0, 40.0, 0.0), (-20.0, 40.0, 0.0),
)

#: Head motion: inter-session (T1w) and intra-session (VFA vs T1w) ranges.
INTER_ROT_DEG = (4.0, 8.0)
INTER_TRANS_MM = (4.0, 8.0)
INTRA_ROT_DEG = (0.5, 1.5)
INTRA_TRANS_MM = (0.5, 1.5)
PIVOT_RADIUS_MM = 10.0

#: B1+ field parameters (object coordinates, mm).
B1_EDGE = 0.72
B1_CENTRE_GAIN = 0.50
B1_CENTRE_MM = (0.0, -18.0, 12.0)
B1_WIDTH_MM = (55.0, 65.0, 45.0)
B1_TILT_RANGE = (-0.02, 0.02)
#: Receive-bias amplitude (fraction) and length scale (mm).
RX_AMPLITUDE = 0.15
RX_LENGTH_MM = 80.0

#: MP2RAGE protocol (3 T, Siemens-like: 176 slices with 6/8 partial Fourier in the slab
#: direction give NumberShots [44, 88]); fields of ``qmri.mp2rage.MP2RAGEProtocol``.
MP2RAGE_PROTOCOL = {
    "repetition_time_preparation_s": 5.0,
    "repetition_time_excitation_s": 0.0071,
    "inversion_times_s": (0.7, 2.5),
    "flip_angles_deg": (4.0, 5.0),
    "shots_before": 44,
    "shots_after": 88,
    "inversion_efficiency": 0.96,
}
#: ``ce-`` label and timing of the post-agent images of the same-session (NanoBrainMets)
#: design: pre- and post-AGuIX MP2RAGE in one session, 2 h apart.
SAME_SESSION_CE = "AGuIX"
SAME_SESSION_HOURS = 2.0
#: Background phase of the MP2RAGE images: offset (rad) and wrap length (mm) of the ramp.
PHASE_OFFSET_RAD = 0.7
PHASE_RAMP_MM = 150.0

AGENT_DOSES_EXTRA_MG_PER_KG = (15.0, 30.0, 75.0)
PRIMARY_TUMORS = ("NSCLC", "melanoma", "breast", "colon")
WEIGHT_RANGE_KG = (55.0, 95.0)
MANUFACTURER = "bids-agquant DRO"


@dataclass(frozen=True)
class DRO:
    """Locations of a generated digital reference object.

    Attributes
    ----------
    bids_dir : pathlib.Path
        Root of the raw BIDS dataset.
    contours_dir : pathlib.Path
        The contours derivatives dataset, ``bids_dir / "derivatives" / "contours"``.
    truth_dir : pathlib.Path
        Ground truth (parameters, poses, per-lesion table, truth maps); outside ``bids_dir``.
    """

    bids_dir: Path
    contours_dir: Path
    truth_dir: Path


# --------------------------------------------------------------------------------------
# Internal data structures
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    gm: np.ndarray  # float32, 1 mm
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray  # 1 mm voxel -> object mm
    centroid_mm: np.ndarray  # brain centroid (object mm)
    edt_mm: np.ndarray  # distance to outside the brain mask, 2 mm subsampled grid
    edt_affine: np.ndarray
    support_box: np.ndarray  # (2, 3) 1 mm voxel index bounds of the non-zero tissue maps


@dataclass(frozen=True)
class _Lesion:
    label: int
    pattern: str
    center_mm: np.ndarray  # object mm
    rotation: np.ndarray  # 3x3, columns = ellipsoid axes in object space
    semi_axes_mm: np.ndarray
    t1_s: float
    gd_target_mM: float  # D1 mean over GTV (0 for placebo)
    d8_factor: float

    @property
    def r_eq_mm(self) -> float:
        return float(np.prod(self.semi_axes_mm) ** (1.0 / 3.0))

    @property
    def max_semi_mm(self) -> float:
        return float(np.max(self.semi_axes_mm))


@dataclass(frozen=True)
class _Role:
    agent: str
    dose_mg_per_kg: float
    b1_units: str | None  # None (no map), "fraction" or "percent"
    design: str = "sessions"  # "sessions" (D0/D1/D8) or "same-session" (D0 + D0 ce-AGuIX)
    methods: tuple[str, ...] = ("vfa",)
    phase_units: str | None = None  # MP2RAGE phase: "rad" or "siemens" (-4096..4095)


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
    def kinds(self) -> tuple[str, ...]:
        """Image kinds acquired at every timepoint (besides the T1w)."""
        return tuple({"vfa": "VFA", "mp2rage": "MP2RAGE"}[m] for m in self.role.methods)


# --------------------------------------------------------------------------------------
# Anatomy and grids
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _anatomy() -> _Anatomy:
    """Load the 1 mm MNI152 tissue fractions (offline) and derived quantities."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = np.clip(np.asarray(gm_img.get_fdata(dtype=np.float32)), 0.0, 1.0)
    wm = np.clip(
        np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)),
        0.0,
        1.0,
    )
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    soft = ndi.gaussian_filter(mask.astype(np.float32), sigma=1.0)
    csf = np.clip(soft - gm - wm, 0.0, 1.0).astype(np.float32)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    ijk = np.argwhere(mask)
    centroid = affine[:3, :3] @ ijk.mean(axis=0) + affine[:3, 3]
    sub = mask[::2, ::2, ::2]
    edt = ndi.distance_transform_edt(sub, sampling=2.0).astype(np.float32)
    edt_affine = affine.copy()
    edt_affine[:3, :3] *= 2.0
    nz = np.argwhere((gm + wm + csf) > 0)
    support_box = np.stack([nz.min(axis=0) - 1, nz.max(axis=0) + 1]).astype(np.float64)
    return _Anatomy(gm, wm, csf, affine, centroid, edt, edt_affine, support_box)


@lru_cache(maxsize=2)
def _grid(resolution_mm: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Scanner grid: shape and affine of nilearn's MNI152 template at ``resolution_mm``."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution_mm)
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)


def _axis_coords(shape, matrix):
    """World coordinates ``matrix @ [i, j, k, 1]`` for every voxel, as three float32 arrays.

    Built by broadcasting (no index grid in memory).
    """
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(shape[1], dtype=np.float32)[None, :, None]
    k = np.arange(shape[2], dtype=np.float32)[None, None, :]
    m = np.asarray(matrix, dtype=np.float32)
    return [m[a, 0] * i + m[a, 1] * j + m[a, 2] * k + m[a, 3] for a in range(3)]


def _sample_fractions(anat: _Anatomy, shape, affine, pose, pool=None):
    """Tissue fractions (GM, WM, CSF) at the object points of every scanner voxel.

    Trilinear interpolation of the 1 mm maps at ``x = pose^-1 @ affine @ ijk``, computed only
    in the scanner-voxel box that can receive non-zero tissue (the maps are 0 elsewhere).
    """
    vox_to_1mm = np.linalg.inv(anat.affine) @ np.linalg.inv(pose) @ affine
    # Bounding box, in scanner voxels, of the transformed support box (all 8 corners).
    lo1, hi1 = anat.support_box
    corners = np.array([[x, y, z, 1.0] for x in (lo1[0], hi1[0]) for y in (lo1[1], hi1[1])
                        for z in (lo1[2], hi1[2])])
    cvox = (np.linalg.inv(vox_to_1mm) @ corners.T)[:3]
    lo = np.clip(np.floor(cvox.min(axis=1)).astype(int) - 1, 0, np.asarray(shape))
    hi = np.clip(np.ceil(cvox.max(axis=1)).astype(int) + 2, 0, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    offset = vox_to_1mm[:3, :3] @ lo + vox_to_1mm[:3, 3]

    def one(arr):
        full = np.zeros(shape, dtype=np.float32)
        if min(box_shape) > 0:
            full[box] = ndi.affine_transform(
                arr, vox_to_1mm[:3, :3], offset=offset, output_shape=box_shape,
                output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False)
        return full

    maps = (anat.gm, anat.wm, anat.csf)
    if pool is None:
        return [one(arr) for arr in maps]
    return list(pool.map(one, maps))


# --------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------


def _rotation(axis, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a unit ``axis`` by ``angle_rad`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1.0 - math.cos(angle_rad)) * (k @ k)


def _rigid(rotation: np.ndarray, pivot_mm, translation_mm) -> np.ndarray:
    """4x4 matrix of ``x -> R (x - p) + p + t``."""
    m = np.eye(4)
    p = np.asarray(pivot_mm, dtype=np.float64)
    m[:3, :3] = rotation
    m[:3, 3] = p - rotation @ p + np.asarray(translation_mm, dtype=np.float64)
    return m


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _random_motion(rng, rot_range_deg, trans_range_mm, centre_mm, pivot_radius_mm):
    """Random rigid motion; returns the 4x4 matrix and its description."""
    axis = _unit_vector(rng)
    angle = float(rng.uniform(*rot_range_deg))
    pivot = np.asarray(centre_mm) + _unit_vector(rng) * rng.uniform(0.0, pivot_radius_mm)
    trans = _unit_vector(rng) * rng.uniform(*trans_range_mm)
    mat = _rigid(_rotation(axis, math.radians(angle)), pivot, trans)
    info = {
        "rotation_axis": axis.round(6).tolist(),
        "rotation_deg": round(angle, 6),
        "pivot_mm": pivot.round(6).tolist(),
        "translation_mm": trans.round(6).tolist(),
    }
    return mat, info


def _max_feret_mm(points: np.ndarray) -> float:
    """Maximum 3-D Feret diameter (mm) of a point set (voxel centres)."""
    n = len(points)
    if n < 2:
        return 0.0
    if n > 2000:
        try:
            points = points[ConvexHull(points).vertices]
        except Exception:  # noqa: BLE001 - degenerate hull: fall back to all points
            pass
    return float(pdist(points).max())


# --------------------------------------------------------------------------------------
# Participants, lesions, poses
# --------------------------------------------------------------------------------------


def _participant_roles(n: int) -> list[_Role]:
    """Roles of subjects 1..n (see the module docstring)."""
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
            dose = AGENT_DOSES_EXTRA_MG_PER_KG[(idx - 3) % len(AGENT_DOSES_EXTRA_MG_PER_KG)]
            roles.append(_Role("AGuIX", dose, "fraction" if idx % 2 == 1 else "percent"))
    return roles


def _timepoints(design: str) -> list[_Timepoint]:
    if design == "same-session":
        return [_Timepoint(BASELINE_SESSION, BASELINE_SESSION, None),
                _Timepoint(f"{BASELINE_SESSION}_ce-{SAME_SESSION_CE}", BASELINE_SESSION,
                           SAME_SESSION_CE)]
    return [_Timepoint(ses, ses, None) for ses in SESSIONS]


def _concentration_factor(key: str, lesion: _Lesion) -> float:
    """Concentration at timepoint ``key`` relative to D1 (2 h after the agent)."""
    if key == BASELINE_SESSION:
        return 0.0
    if key == "D8":
        return lesion.d8_factor
    return 1.0  # D1, and the same-session post-agent timepoint (also 2 h)


def _edt_at(anat: _Anatomy, point_mm) -> float:
    ijk = np.linalg.solve(anat.edt_affine, np.append(point_mm, 1.0))[:3]
    return float(
        ndi.map_coordinates(anat.edt_mm, ijk[:, None], order=1, mode="constant", cval=0.0)[0]
    )


def _tissue_at(anat: _Anatomy, point_mm) -> float:
    ijk = np.linalg.solve(anat.affine, np.append(point_mm, 1.0))[:3]
    gm = ndi.map_coordinates(anat.gm, ijk[:, None], order=1)[0]
    wm = ndi.map_coordinates(anat.wm, ijk[:, None], order=1)[0]
    return float(gm + wm)


def _site_ok(anat, centre, max_semi, placed) -> bool:
    if _edt_at(anat, centre) < max_semi + 4.0 * EDGE_WIDTH_MM + 2.0:
        return False
    if _tissue_at(anat, centre) < 0.5:
        return False
    for other_c, other_semi in placed:
        if np.linalg.norm(centre - other_c) < max_semi + other_semi + LESION_GAP_MM:
            return False
    return True


def _place_lesions(rng: np.random.Generator, anat: _Anatomy, pd_is_placebo: bool,
                   dose: float) -> list[_Lesion]:
    """Three lesions: one non-measurable, two >= 17 mm, one per concentration pattern."""
    diameters = [
        float(rng.uniform(*LARGE_DIAMETER_RANGE_MM)),
        float(rng.uniform(*LARGE_DIAMETER_RANGE_MM)),
        float(rng.uniform(*SMALL_DIAMETER_RANGE_MM)),
    ]
    order = np.argsort(diameters)[::-1]  # place the largest first
    patterns = [PATTERNS[i] for i in rng.permutation(len(PATTERNS))]
    labels = (rng.permutation(3) + 1).tolist()
    sites = np.asarray(CANDIDATE_SITES_MM, dtype=np.float64)
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[_Lesion] = []
    for rank, idx in enumerate(order):
        diam = diameters[idx]
        r_eq = diam / 2.0
        small = diam < 10.0
        lo, hi = SMALL_AXIS_RATIO_RANGE if small else LARGE_AXIS_RATIO_RANGE
        ratios = rng.uniform(lo, hi, size=3)
        semi = r_eq * ratios / np.prod(ratios) ** (1.0 / 3.0)
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rot = q * np.sign(np.diag(r))
        if np.linalg.det(rot) < 0:
            rot[:, 0] = -rot[:, 0]
        max_semi = float(semi.max())
        centre = None
        for site_idx in rng.permutation(len(sites)):
            jitter = rng.uniform(-3.0, 3.0, size=3)
            for cand in (sites[site_idx] + jitter, sites[site_idx]):
                if _site_ok(anat, cand, max_semi, placed):
                    centre = cand
                    break
            if centre is not None:
                break
        if centre is None:  # fall back to any deep-enough brain point
            need = max_semi + 4.0 * EDGE_WIDTH_MM + 2.0
            cand_ijk = np.argwhere(anat.edt_mm >= need)
            cand_mm = cand_ijk @ anat.edt_affine[:3, :3].T + anat.edt_affine[:3, 3]
            for c_idx in rng.permutation(len(cand_mm)):
                if _site_ok(anat, cand_mm[c_idx], max_semi, placed):
                    centre = cand_mm[c_idx]
                    break
        if centre is None:
            raise RuntimeError("could not place a lesion inside the brain; this is a bug")
        placed.append((np.asarray(centre, dtype=np.float64), max_semi))
        t1 = float(rng.uniform(*LESION_T1_RANGE_S))
        u = float(rng.uniform(0.6, 1.0))
        target = GD_MEAN_BASE_MM + GD_MEAN_SPAN_MM * (dose / 100.0) * u
        target = float(np.clip(target, *GD_MEAN_RANGE_MM))
        d8 = float(rng.uniform(*D8_FACTOR_RANGE))
        lesions.append(
            _Lesion(
                label=int(labels[rank]),
                pattern=patterns[rank],
                center_mm=np.round(np.asarray(centre, dtype=np.float64), 3),
                rotation=rot,
                semi_axes_mm=semi,
                t1_s=t1,
                gd_target_mM=0.0 if pd_is_placebo else target,
                d8_factor=d8,
            )
        )
    return sorted(lesions, key=lambda les: les.label)


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


# --------------------------------------------------------------------------------------
# Field evaluation
# --------------------------------------------------------------------------------------


def _pattern(pattern: str, rho: np.ndarray) -> np.ndarray:
    r = np.minimum(rho, 1.0)
    if pattern == "homogeneous":
        return np.ones_like(r)
    if pattern == "rim":
        return 0.25 + 0.75 * r * r
    if pattern == "central_max":
        return 1.0 - 0.75 * r * r
    raise ValueError(f"unknown concentration pattern {pattern!r}")


def _lesion_boxes(lesions, shape, affine, pose):
    """Per lesion: (slices, rho, f_L, unit-concentration field) in a bounding box.

    Evaluated analytically at ``x = pose^-1 @ affine @ ijk`` for the voxels of a box that
    contains the lesion plus 6 edge widths.
    """
    vox_to_obj = np.linalg.inv(pose) @ affine
    scan_to_vox = np.linalg.inv(affine)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = []
    for les in lesions:
        c_vox = (scan_to_vox @ pose @ np.append(les.center_mm, 1.0))[:3]
        reach = les.max_semi_mm + 6.0 * EDGE_WIDTH_MM
        lo = np.maximum(np.floor(c_vox - reach / voxel).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(c_vox + reach / voxel).astype(int) + 2, np.asarray(shape))
        if np.any(hi <= lo):
            continue
        slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        i = np.arange(lo[0], hi[0], dtype=np.float64)[:, None, None]
        j = np.arange(lo[1], hi[1], dtype=np.float64)[None, :, None]
        k = np.arange(lo[2], hi[2], dtype=np.float64)[None, None, :]
        d = [vox_to_obj[a, 0] * i + vox_to_obj[a, 1] * j + vox_to_obj[a, 2] * k
             + vox_to_obj[a, 3] - les.center_mm[a] for a in range(3)]
        rho2 = 0.0
        for b in range(3):  # local ellipsoid axis b
            u = (les.rotation[0, b] * d[0] + les.rotation[1, b] * d[1]
                 + les.rotation[2, b] * d[2]) / les.semi_axes_mm[b]
            rho2 = rho2 + u * u
        rho = np.sqrt(rho2)
        f = 0.5 * erfc((rho - 1.0) * les.r_eq_mm / (math.sqrt(2.0) * EDGE_WIDTH_MM))
        f[f < 1e-7] = 0.0  # drop the far tail (> 5.2 edge widths outside)
        unit = f * _pattern(les.pattern, rho)
        out.append((les, slices, rho, f, unit))
    return out


class _Fields:
    """Parametric maps of one participant on one (grid, pose)."""

    def __init__(self, anat, part: _Participant, shape, affine, pose, fractions=None,
                 pool=None):
        gm, wm, csf = fractions if fractions is not None else _sample_fractions(
            anat, shape, affine, pose, pool)
        self.shape = shape
        self.wm = wm
        tissue = gm + wm + csf
        r1_tissue = (gm / T1_S["GM"] + wm / T1_S["WM"] + csf / T1_S["CSF"])
        m0_tissue = gm * M0_REL["GM"] + wm * M0_REL["WM"] + csf * M0_REL["CSF"]
        self.boxes = _lesion_boxes(part.lesions, shape, affine, pose)
        lesion_f = np.zeros(shape, dtype=np.float32)
        lesion_r1 = np.zeros(shape, dtype=np.float32)
        for les, sl, _rho, f, _unit in self.boxes:
            lesion_f[sl] += f.astype(np.float32)
            lesion_r1[sl] += (f / les.t1_s).astype(np.float32)
        np.clip(lesion_f, 0.0, 1.0, out=lesion_f)
        keep = 1.0 - lesion_f
        denom = keep * tissue + lesion_f
        with np.errstate(divide="ignore", invalid="ignore"):
            r1 = np.where(denom > 1e-6, (keep * r1_tissue + lesion_r1) / denom, 0.0)
        self.r1_pre = r1.astype(np.float32)
        self.m0 = (keep * m0_tissue + LESION_M0_REL * lesion_f).astype(np.float32)
        self.lesion_f = lesion_f
        self.support = denom  # total (tissue + lesion) fraction

    def concentration(self, c0_by_label: dict[int, float]) -> np.ndarray:
        """Gd concentration (mM) for the given peak concentration per lesion label."""
        conc = np.zeros(self.shape, dtype=np.float64)
        for les, sl, _rho, _f, unit in self.boxes:
            c0 = c0_by_label.get(les.label, 0.0)
            if c0:
                conc[sl] += c0 * unit
        return conc


def _b1_field(shape, affine, pose, tilt: float) -> np.ndarray:
    """B1+ fraction of nominal at the object points of every voxel (head-fixed)."""
    x = _axis_coords(shape, np.linalg.inv(pose) @ affine)
    q = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        q += ((x[a] - np.float32(B1_CENTRE_MM[a])) / np.float32(B1_WIDTH_MM[a])) ** 2
    kappa = B1_EDGE + B1_CENTRE_GAIN * np.exp(-0.5 * q) + np.float32(tilt / 70.0) * x[0]
    return kappa.astype(np.float32)


def _receive_field(shape, affine, direction, centre_mm) -> np.ndarray:
    """Receive sensitivity, fixed in scanner coordinates, within 1 +- RX_AMPLITUDE."""
    y = _axis_coords(shape, affine)
    lin = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        lin += np.float32(direction[a] / RX_LENGTH_MM) * (y[a] - np.float32(centre_mm[a]))
    return (1.0 + RX_AMPLITUDE * np.tanh(lin)).astype(np.float32)


def _inverse(r1: np.ndarray) -> np.ndarray:
    """``1 / r1`` where ``r1 > 1e-3 /s``, else 0 (T1 from R1; 0 marks 'undefined')."""
    ok = r1 > 1e-3
    return np.where(ok, 1.0 / np.where(ok, r1, 1.0), 0.0).astype(r1.dtype)


def _spgr(m0, r1, flip_rad, tr_s):
    """SPGR steady-state signal (float32); ``flip_rad`` already includes B1+."""
    e1 = np.exp(-np.float32(tr_s) * r1)
    return m0 * np.sin(flip_rad) * (1.0 - e1) / (1.0 - e1 * np.cos(flip_rad))


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


class _Saver:
    """Write NIfTI files from a thread pool (zlib releases the GIL), bounded backlog."""

    def __init__(self, pool: ThreadPoolExecutor, max_pending: int = 6):
        self.pool = pool
        self.pending: deque = deque()
        self.max_pending = max_pending

    def __call__(self, path: Path, data, affine, dtype=np.float32) -> None:
        arr = np.array(data, dtype=dtype)  # a private copy: callers may reuse buffers
        while len(self.pending) >= self.max_pending:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(_save, path, arr, affine, dtype))

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return f"{v:.10g}"
        return str(v)

    lines = ["\t".join(header)] + ["\t".join(fmt(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


_README = """\
# bids-agquant digital reference object (DRO)

This dataset is **synthetic**. It was generated by `bids_agquant.dro.make_dataset`
(bids-agquant {version}) to test the quantification of gadolinium nanoparticle (AGuIX)
uptake in brain metastases from variable-flip-angle (VFA) and MP2RAGE T1 mapping. Most
participants follow the NanoRad phase 1 design: baseline session `D0`, session `D1` about
2 h after the intravenous injection, and session `D8` one week later. A participant with
post-agent images tagged `ce-AGuIX` inside session `D0` follows the NanoBrainMets design
(pre- and post-agent MP2RAGE on one day; image times in its `_scans.tsv`).

Each timepoint holds a 3-D spoiled gradient-echo T1-weighted image (`_T1w`) and VFA images
(four spoiled gradient-echo images at flip angles 2, 5, 10 and 15 degrees, `_flip-<n>_VFA`)
and/or MP2RAGE images (`_inv-<1|2>_part-<mag|phase>_MP2RAGE` and `_UNIT1`); every treated
participant has a B1+ transmit-field map per session (`fmap/*_TB1map`, in fraction or in
percent as stated by its `Units`). The anatomy is the MNI152 2009c template
(skull-stripped; no head is modelled outside the brain). The head moves between and within
sessions; all images share one scanner grid. Lesion contours (GTV, one integer label per
lesion, drawn on the D0 T1w image) are in `derivatives/contours`.

The ground truth (head poses, true concentration, T1 and B1 maps, per-lesion table) is kept
outside this dataset. Participant `sub-{placebo}` received a placebo. Parameters: seed
{seed}, resolution {resolution} mm, SNR {snr}.
"""


def _sidecar_vfa(flip: float, b1_id: str | None) -> dict:
    side = {
        "FlipAngle": flip,
        "RepetitionTimeExcitation": VFA_TR_S,
        "EchoTime": TE_S,
        "PulseSequenceType": "SPGR",
        "MagneticFieldStrength": FIELD_STRENGTH_T,
    }
    if b1_id:
        side["B1FieldSource"] = b1_id
    return side


def _write_raw_top(bids_dir: Path, parts: list[_Participant], seed, resolution, snr) -> None:
    bids_dir.mkdir(parents=True, exist_ok=True)
    _write_json(bids_dir / "dataset_description.json", {
        "Name": "bids-agquant digital reference object (synthetic AGuIX VFA trial)",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bids-agquant developers", "bids-agquant DRO generator"],
        "HowToAcknowledge": "Synthetic data generated by bids-agquant (bids_agquant.dro).",
        "GeneratedBy": [{
            "Name": "bids-agquant-dro",
            "Version": __version__,
            "Description": f"bids_agquant.dro.make_dataset(seed={seed}, "
                           f"resolution_mm={resolution}, snr={snr})",
        }],
    })
    placebo = next((p.label for p in parts if p.agent == "placebo"), "none")
    (bids_dir / "README.md").write_text(
        _README.format(version=__version__, placebo=placebo, seed=seed,
                       resolution=resolution, snr=snr),
        encoding="utf-8",
    )
    _write_tsv(
        bids_dir / "participants.tsv",
        ["participant_id", "agent", "dose_mg_per_kg", "weight_kg", "primary_tumor"],
        [[f"sub-{p.label}", p.agent, p.dose_mg_per_kg, p.weight_kg, p.primary_tumor]
         for p in parts],
    )
    _write_json(bids_dir / "participants.json", {
        "participant_id": {"Description": "Unique participant identifier"},
        "agent": {
            "Description": "Agent injected intravenously after the D0 session",
            "Levels": {"AGuIX": "AGuIX gadolinium-chelate polysiloxane nanoparticles",
                       "placebo": "Placebo (no contrast agent)"},
        },
        "dose_mg_per_kg": {"Description": "Injected dose of agent per body weight",
                           "Units": "mg/kg"},
        "weight_kg": {"Description": "Body weight", "Units": "kg"},
        "primary_tumor": {
            "Description": "Primary cancer of the brain metastases",
            "Levels": {"NSCLC": "Non-small-cell lung cancer", "melanoma": "Melanoma",
                       "breast": "Breast cancer", "colon": "Colorectal cancer"},
        },
    })
    _write_json(bids_dir / "sessions.json", {
        "session_id": {"Description": "Session label (D0 baseline, D1 2 h, D8 one week)"},
        "acq_time": {"Description": "Acquisition date and time of the session (synthetic)"},
        "hours_post_injection": {"Description": "Time since the injection of the agent; "
                                                "n/a before injection", "Units": "h"},
    })
    common = {"Manufacturer": MANUFACTURER, "ManufacturersModelName": "synthetic 3T",
              "DeviceSerialNumber": "DRO-0001", "StationName": "dro",
              "SoftwareVersions": f"bids-agquant {__version__}",
              "ReceiveCoilName": "synthetic head coil",
              "InstitutionName": "bids-agquant DRO", "MRAcquisitionType": "3D",
              "ScanningSequence": "GR", "SequenceVariant": "SP"}
    _write_json(bids_dir / "T1w.json", {**common, "SequenceName": "spoiled 3D GRE",
                                       "PulseSequenceType": "SPGR"})
    _write_json(bids_dir / "VFA.json", {**common, "SequenceName": "spoiled 3D GRE (VFA)"})
    if any("mp2rage" in p.role.methods for p in parts):
        # Constant MP2RAGE parameters live in the inherited top-level sidecar (as in
        # bids-examples/qmri_mp2rage); FlipAngle and InversionTime are per inv- file.
        _write_json(bids_dir / "MP2RAGE.json", {
            **common, "ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SK", "SP", "MP"],
            "SequenceName": "synthetic MP2RAGE",
            "MagneticFieldStrength": FIELD_STRENGTH_T,
            "RepetitionTimeExcitation": MP2RAGE_PROTOCOL["repetition_time_excitation_s"],
            "RepetitionTimePreparation": MP2RAGE_PROTOCOL["repetition_time_preparation_s"],
            "NumberShots": [MP2RAGE_PROTOCOL["shots_before"], MP2RAGE_PROTOCOL["shots_after"]],
            "EchoTime": TE_S,
        })
        _write_json(bids_dir / "UNIT1.json", {**common, "MagneticFieldStrength":
                                              FIELD_STRENGTH_T,
                                              "SequenceName": "synthetic MP2RAGE (UNI)"})
    if any(p.role.design == "same-session" for p in parts):
        _write_json(bids_dir / "scans.json", {
            "acq_time": {"Description": "Acquisition date and time of the image (synthetic)"},
            "hours_post_injection": {"Description": "Time since the injection of the agent; "
                                                    "n/a before injection", "Units": "h"},
        })
    if any(p.b1_units for p in parts):
        _write_json(bids_dir / "TB1map.json", {
            **common, "MagneticFieldStrength": FIELD_STRENGTH_T,
            "SequenceName": "synthetic B1+ map",
            "Description": "Noise-free synthetic B1+ map: actual / nominal flip angle",
        })


def _write_contours_top(contours_dir: Path) -> None:
    _write_json(contours_dir / "dataset_description.json", {
        "Name": "GTV contours of the bids-agquant digital reference object",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "Authors": ["bids-agquant developers", "bids-agquant DRO generator"],
        "DatasetLinks": {"raw": "../../"},
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "GeneratedBy": [{"Name": "bids-agquant-dro", "Version": __version__,
                         "Description": "Analytic GTVs (ellipsoids, rho <= 1) on the D0 "
                                        "T1w grid"}],
    })
    (contours_dir / "README.md").write_text(
        "# GTV contours (synthetic)\n\nOne integer label per lesion (0 = background) on the "
        "grid of the D0 T1w image of each participant, with a `_dseg.tsv` naming the labels. "
        "Generated together with the raw dataset by `bids_agquant.dro.make_dataset`; the "
        "contour of each lesion is exactly its nominal ellipsoid sampled at voxel centres.\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------------------
# Main entry point
# --------------------------------------------------------------------------------------


def _prepare_dir(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{what} {path} exists and is not an empty directory")
    path.mkdir(parents=True, exist_ok=True)


@dataclass
class _Context:
    anat: _Anatomy
    shape: tuple[int, int, int]
    affine: np.ndarray
    bids_dir: Path
    contours_dir: Path
    truth_dir: Path
    snr: float
    save: _Saver
    cpu: ThreadPoolExecutor
    ref_fractions: list[np.ndarray]

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


LESION_COLUMNS = [
    "participant_id", "session", "ceagent", "timepoint", "lesion_id", "name", "pattern", "agent",
    "dose_mg_per_kg", "hours_post_injection", "center_x_mm", "center_y_mm", "center_z_mm",
    "semi_axis_1_mm", "semi_axis_2_mm", "semi_axis_3_mm", "nominal_diameter_mm",
    "n_voxels", "volume_ml", "equiv_diameter_mm", "longest_diameter_mm", "measurable",
    "gd_mM_mean", "gd_mM_median", "gd_peak_mM", "t1_lesion_nominal_s",
    "t1_baseline_s_mean", "t1_s_mean", "deltaR1_mean",
]


def _write_reference(ctx: _Context, part: _Participant):
    """Truth on the D0 grid (object space), the GTV contour and the per-lesion rows.

    Returns the reference fields (reused for the D0 T1w image), the concentration scale
    (peak mM) per session and lesion label, and the lesion-table rows.
    """
    sub = f"sub-{part.label}"
    shape, affine, save = ctx.shape, ctx.affine, ctx.save
    ref = _Fields(ctx.anat, part, shape, affine, np.eye(4), fractions=ctx.ref_fractions)
    gtv = np.zeros(shape, dtype=np.uint8)
    for les, sl, rho, _f, _unit in ref.boxes:
        gtv[sl][rho <= 1.0] = les.label
    for les, sl, _rho, _f, unit in ref.boxes:
        inside = gtv[sl] == les.label
        mean_unit = float(unit[inside].mean()) if inside.any() else 0.0
        part.c0_mM[les.label] = les.gd_target_mM / mean_unit if mean_unit > 0 else 0.0
    scales = {tp.key: {les.label: part.c0_mM[les.label] * _concentration_factor(tp.key, les)
                       for les in part.lesions}
              for tp in part.timepoints}
    save(ctx.truth_dir / sub / f"{sub}_space-D0_desc-brain_mask.nii.gz",
         ref.support >= 0.5, affine, np.uint8)
    seg_dir = ctx.contours_dir / sub / "ses-D0" / "anat"
    save(seg_dir / f"{sub}_ses-D0_desc-GTV_dseg.nii.gz", gtv, affine, np.uint8)
    _write_tsv(seg_dir / f"{sub}_ses-D0_desc-GTV_dseg.tsv", ["index", "name"],
               [[les.label, f"GTV{les.label}"] for les in part.lesions])
    t1w_uri = f"bids:raw:{sub}/ses-D0/anat/{sub}_ses-D0_T1w.nii.gz"
    _write_json(seg_dir / f"{sub}_ses-D0_desc-GTV_dseg.json", {
        "Description": "Gross tumour volumes, one integer label per lesion (0 = background), "
                       "on the grid of the D0 T1w image",
        "Sources": [t1w_uri],
        "SpatialReference": t1w_uri,
        "Manual": False,
    })

    # Geometry from the contour (identical for every session).
    geom = {}
    for les in part.lesions:
        idx = np.argwhere(gtv == les.label)
        pts = idx @ affine[:3, :3].T + affine[:3, 3]
        vol_ml = len(idx) * ctx.voxel_ml
        geom[les.label] = (len(idx), vol_ml, (6.0 * vol_ml * 1000.0 / math.pi) ** (1.0 / 3.0),
                           _max_feret_mm(pts))

    rows: list[list[object]] = []
    r1_base = t1_base = None
    for tp in part.timepoints:
        ses = tp.session
        conc = ref.concentration(scales[tp.key])
        r1 = ref.r1_pre.astype(np.float64) + R1_AGUIX_PER_MM_PER_S * conc
        t1 = _inverse(r1)
        if r1_base is None:
            r1_base, t1_base = r1, t1
        stem = ctx.truth_dir / sub / f"ses-{ses}" / f"{sub}_{tp.label}_space-D0"
        save(Path(f"{stem}_Gdconc.nii.gz"), conc, affine)
        save(Path(f"{stem}_T1map.nii.gz"), t1, affine)
        save(Path(f"{stem}_R1map.nii.gz"), r1, affine)
        for les in part.lesions:
            inside = gtv == les.label
            c_in = conc[inside]
            n_vox, vol_ml, eq_d, longest = geom[les.label]
            rows.append([
                sub, ses, tp.ceagent, tp.label, les.label, f"GTV{les.label}", les.pattern,
                part.agent, part.dose_mg_per_kg, part.hours_post_injection[tp.key],
                *(float(v) for v in les.center_mm), *(float(v) for v in les.semi_axes_mm),
                2.0 * les.r_eq_mm, n_vox, vol_ml, eq_d, longest, bool(longest >= 10.0),
                float(c_in.mean()), float(np.median(c_in)), float(scales[tp.key][les.label]),
                les.t1_s, float(t1_base[inside].mean()), float(t1[inside].mean()),
                float((r1[inside] - r1_base[inside]).mean()),
            ])
    return ref, scales, rows


def _mp2rage_images(s1, s2, sigma, rng, rx_direction, affine, shape, phase_units):
    """Complex MP2RAGE signals with a shared background phase and complex Gaussian noise →
    magnitudes, phases (radians or the Siemens -4096..4095 scale) and the scanner UNIT1."""
    from .qmri.mp2rage import UNIT1_SCALE, uni_from_signals

    y = _axis_coords(shape, affine)
    ramp = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        ramp += np.float32(rx_direction[a]) * y[a]
    phase0 = np.float32(PHASE_OFFSET_RAD) + np.float32(2 * math.pi / PHASE_RAMP_MM) * ramp
    carrier = np.exp(1j * phase0).astype(np.complex64)
    out = {}
    signals = []
    for n, s in ((1, s1), (2, s2)):
        c = s.astype(np.float32) * carrier
        if sigma > 0:
            c += np.float32(sigma) * (rng.standard_normal(shape, dtype=np.float32)
                                      + 1j * rng.standard_normal(shape, dtype=np.float32))
        signals.append(c)
        phase = np.angle(c).astype(np.float32)
        if phase_units == "siemens":
            phase = np.clip(np.rint(phase / np.float32(math.pi) * 4096.0), -4096, 4095)
        out[f"inv{n}_mag"] = np.abs(c).astype(np.float32)
        out[f"inv{n}_phase"] = phase
    uni = uni_from_signals(*signals)
    out["unit1"] = np.clip(np.rint(UNIT1_SCALE * (uni + 0.5)), 0, UNIT1_SCALE).astype(np.uint16)
    return out


def _write_timepoint(ctx: _Context, part: _Participant, rng: np.random.Generator,
                     tp: _Timepoint, ref: _Fields, c0: dict[int, float]) -> dict[str, float]:
    """Synthesise and write the T1w, VFA / MP2RAGE (and B1) images of one timepoint.

    Returns the noise sigma per acquisition (``"VFA"`` also applies to the T1w;
    ``"MP2RAGE"``).
    """
    from .qmri.mp2rage import MP2RAGEProtocol, mp2rage_signals

    sub = f"sub-{part.label}"
    ses = tp.session
    shape, affine, save = ctx.shape, ctx.affine, ctx.save
    poses = part.poses[tp.key]
    r1_agent = np.float32(R1_AGUIX_PER_MM_PER_S)
    rx = _receive_field(shape, affine, part.rx_direction[tp.key], ctx.anat.centroid_mm)
    anat_dir = ctx.bids_dir / sub / f"ses-{ses}" / "anat"
    stem = f"{sub}_{tp.label}"
    truth_dir = ctx.truth_dir / sub / f"ses-{ses}"
    sigmas: dict[str, float] = {}
    b1_kappa = None

    def wm_mean(fields, img):
        return float(np.abs(img[(fields.wm >= 0.9) & (fields.lesion_f < 0.01)]).mean())

    def fields_at(kind):
        fields = _Fields(ctx.anat, part, shape, affine, poses[kind], pool=ctx.cpu)
        kappa = _b1_field(shape, affine, poses[kind], part.b1_tilt)
        r1 = fields.r1_pre + r1_agent * fields.concentration(c0).astype(np.float32)
        m0_app = (np.float32(SIGNAL_SCALE) * rx * fields.m0).astype(np.float32)
        save(truth_dir / f"{stem}_space-{kind}_B1map.nii.gz", kappa, affine)
        save(truth_dir / f"{stem}_space-{kind}_T1map.nii.gz", _inverse(r1), affine)
        save(truth_dir / f"{stem}_space-{kind}_M0map.nii.gz", m0_app, affine)
        return fields, kappa, r1, m0_app

    def noisy(img: np.ndarray, sigma: float) -> np.ndarray:
        if sigma == 0.0:
            return img.astype(np.float32)
        re = img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
        im = np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
        return np.hypot(re, im)

    vfa_clean = None
    if "VFA" in part.kinds:
        # VFA: noise-free images first; sigma from their white-matter signal.
        vfa, kappa, r1v, m0_app = fields_at("VFA")
        vfa_clean = [_spgr(m0_app, r1v, kappa * np.float32(math.radians(fa)), VFA_TR_S)
                     for fa in VFA_FLIP_DEG]
        sigmas["VFA"] = max(wm_mean(vfa, img) for img in vfa_clean) / ctx.snr
        b1_kappa = kappa
        del vfa, r1v, m0_app

    if "MP2RAGE" in part.kinds:
        protocol = MP2RAGEProtocol(**MP2RAGE_PROTOCOL)
        mp, kappa_m, r1m, m0m = fields_at("MP2RAGE")
        t1m = np.where(r1m > 1e-3, 1.0 / np.maximum(r1m, 1e-3), 5.0)
        s1, s2 = mp2rage_signals(t1m, protocol, b1=kappa_m, m0=m0m)
        sigma_m = wm_mean(mp, s2) / ctx.snr
        sigmas["MP2RAGE"] = sigma_m
        if b1_kappa is None:
            b1_kappa = kappa_m
        images = _mp2rage_images(s1, s2, sigma_m, rng, part.rx_direction[tp.key], affine,
                                 shape, part.role.phase_units)
        del mp, r1m, m0m, t1m, s1, s2, kappa_m
        phase_dtype = np.int16 if part.role.phase_units == "siemens" else np.float32
        for n in (1, 2):
            side = {"FlipAngle": MP2RAGE_PROTOCOL["flip_angles_deg"][n - 1],
                    "InversionTime": MP2RAGE_PROTOCOL["inversion_times_s"][n - 1]}
            save(anat_dir / f"{stem}_inv-{n}_part-mag_MP2RAGE.nii.gz", images[f"inv{n}_mag"],
                 affine)
            _write_json(anat_dir / f"{stem}_inv-{n}_part-mag_MP2RAGE.json", side)
            save(anat_dir / f"{stem}_inv-{n}_part-phase_MP2RAGE.nii.gz",
                 images[f"inv{n}_phase"], affine, phase_dtype)
            # BIDS requires Units on phase images; "arbitrary" leaves the scale to the values.
            phase_side = {**side, "Units": "rad" if part.role.phase_units == "rad"
                          else "arbitrary"}
            _write_json(anat_dir / f"{stem}_inv-{n}_part-phase_MP2RAGE.json", phase_side)
        save(anat_dir / f"{stem}_UNIT1.nii.gz", images["unit1"], affine, np.uint16)
        del images

    # T1w (the D0 pose is the identity: reuse the reference fields).
    pose_t1w = poses["T1w"]
    t1w = ref if np.array_equal(pose_t1w, np.eye(4)) else _Fields(
        ctx.anat, part, shape, affine, pose_t1w, pool=ctx.cpu)
    kappa_t = _b1_field(shape, affine, pose_t1w, part.b1_tilt)
    r1t = t1w.r1_pre + r1_agent * t1w.concentration(c0).astype(np.float32)
    t1w_clean = _spgr(np.float32(SIGNAL_SCALE) * rx * t1w.m0, r1t,
                      kappa_t * np.float32(math.radians(T1W_FLIP_DEG)), T1W_TR_S)
    if "VFA" not in sigmas:  # no VFA: the T1w noise follows the SNR definition on itself
        sigmas["VFA"] = wm_mean(t1w, t1w_clean) / ctx.snr
    sigma = sigmas["VFA"]
    del t1w, r1t, kappa_t

    save(anat_dir / f"{stem}_T1w.nii.gz", noisy(t1w_clean, sigma), affine)
    _write_json(anat_dir / f"{stem}_T1w.json", {
        "FlipAngle": T1W_FLIP_DEG, "RepetitionTime": T1W_TR_S, "EchoTime": TE_S,
        "MagneticFieldStrength": FIELD_STRENGTH_T,
    })
    del t1w_clean
    b1_id = f"B1sub{part.label}ses{ses}" if part.b1_units else None
    if vfa_clean is not None:
        for n, (fa, img) in enumerate(zip(VFA_FLIP_DEG, vfa_clean, strict=True), start=1):
            save(anat_dir / f"{stem}_flip-{n}_VFA.nii.gz", noisy(img, sigma), affine)
            _write_json(anat_dir / f"{stem}_flip-{n}_VFA.json", _sidecar_vfa(fa, b1_id))
    if part.b1_units and tp.ceagent is None:
        # One B1+ map per session, acquired with the first T1-mapping images.
        fmap_dir = ctx.bids_dir / sub / f"ses-{ses}" / "fmap"
        values = b1_kappa * np.float32(100.0) if part.b1_units == "percent" else b1_kappa
        save(fmap_dir / f"{sub}_ses-{ses}_TB1map.nii.gz", values, affine)
        _write_json(fmap_dir / f"{sub}_ses-{ses}_TB1map.json", {
            "Units": part.b1_units,
            "B1FieldIdentifier": b1_id,
            "IntendedFor": _intended_for(part, ses),
        })
    return sigmas


def _image_names(part: _Participant, tp: _Timepoint) -> list[str]:
    """Raw image paths of one timepoint, relative to its session folder."""
    stem = f"anat/sub-{part.label}_{tp.label}"
    names = [f"{stem}_T1w.nii.gz"]
    if "VFA" in part.kinds:
        names += [f"{stem}_flip-{n}_VFA.nii.gz" for n in range(1, len(VFA_FLIP_DEG) + 1)]
    if "MP2RAGE" in part.kinds:
        names += [f"{stem}_inv-{n}_part-{p}_MP2RAGE.nii.gz" for n in (1, 2)
                  for p in ("mag", "phase")] + [f"{stem}_UNIT1.nii.gz"]
    return names


def _intended_for(part: _Participant, ses: str) -> list[str]:
    sub = f"sub-{part.label}"
    return [f"bids::{sub}/ses-{ses}/{name}" for tp in part.timepoints if tp.session == ses
            for name in _image_names(part, tp) if not name.endswith("_T1w.nii.gz")]


def _participant_info(part: _Participant) -> dict:
    return {
        "design": part.role.design,
        "t1_methods": list(part.role.methods),
        "timepoints": {tp.key: tp.label for tp in part.timepoints},
        "mp2rage_phase_units": part.role.phase_units,
        "agent": part.agent,
        "dose_mg_per_kg": part.dose_mg_per_kg,
        "weight_kg": part.weight_kg,
        "primary_tumor": part.primary_tumor,
        "b1_map_units": part.b1_units,
        "b1_tilt_per_70mm": part.b1_tilt,
        "receive_direction": {s: v.round(6).tolist() for s, v in part.rx_direction.items()},
        "motion": part.motion,
        "hours_post_injection": part.hours_post_injection,
        "acq_time": part.acq_time,
        "lesions": [
            {"label": les.label, "pattern": les.pattern, "center_mm": les.center_mm.tolist(),
             "semi_axes_mm": les.semi_axes_mm.round(6).tolist(),
             "axes_rotation": les.rotation.round(9).tolist(), "t1_baseline_s": les.t1_s,
             "gd_mean_D1_target_mM": les.gd_target_mM,
             "gd_peak_D1_mM": part.c0_mM[les.label], "d8_over_d1": les.d8_factor}
            for les in part.lesions
        ],
    }


def _truth_json(seed, participants, resolution_mm, shape, affine, snr, sigmas, anat,
                part_info) -> dict:
    return {
        "generator": "bids_agquant.dro.make_dataset",
        "version": __version__,
        "seed": seed,
        "participants": participants,
        "resolution_mm": resolution_mm,
        "grid_shape": list(shape),
        "grid_affine": affine.tolist(),
        "snr": snr if math.isfinite(snr) else None,
        "snr_definition": "sigma = (mean magnitude over WM (WM fraction >= 0.9, lesion "
                          "fraction < 0.01) of the VFA image with the highest mean WM signal,"
                          " or of the T1w when there is no VFA) / snr; complex Gaussian "
                          "noise, magnitude images; one sigma for the T1w and VFA images of "
                          "a timepoint (noise_sigma); MP2RAGE has its own (noise_sigma_mp2rage)",
        "noise_sigma": sigmas,
        "signal_scale": SIGNAL_SCALE,
        "field_strength_T": FIELD_STRENGTH_T,
        "agent": {"name": "AGuIX", "r1_per_mM_per_s": R1_AGUIX_PER_MM_PER_S,
                  "source": "Verry et al. Sci. Adv. 2020 (NanoRad), per Gd at 3 T"},
        "vfa": {"flip_angles_deg": list(VFA_FLIP_DEG), "repetition_time_s": VFA_TR_S,
                "echo_time_s": TE_S},
        "t1w": {"flip_angle_deg": T1W_FLIP_DEG, "repetition_time_s": T1W_TR_S,
                "echo_time_s": TE_S},
        "mp2rage": {**{k: list(v) if isinstance(v, tuple) else v
                       for k, v in MP2RAGE_PROTOCOL.items()},
                    "model": "Marques et al. 2010 steady state (bids_agquant.qmri.mp2rage."
                             "mp2rage_signals), complex images with a shared background phase "
                             f"{PHASE_OFFSET_RAD} rad + 2 pi (d . y) / {PHASE_RAMP_MM} mm, "
                             "UNIT1 = round(4095 (UNI + 0.5)) from the noisy complex images",
                    "snr_definition": "sigma = mean |INV2| over WM / snr (own sigma)"},
        "tissue": {t: {"t1_s": T1_S[t], "m0_relative": M0_REL[t]} for t in T1_S},
        "tissue_sources": {
            "t1_wm_gm": "Wansapura et al., JMRI 9:531-538 (1999), 3 T",
            "t1_csf": "Lu et al., JMRI 22:13-22 (2005), 3 T",
            "m0": "brain water content, e.g. Tofts (ed.) Quantitative MRI of the Brain (2003); "
                  "Whittall et al. MRM 37:34-43 (1997)",
        },
        "lesion_model": {
            "m0_relative": LESION_M0_REL,
            "t1_baseline_range_s": list(LESION_T1_RANGE_S),
            "edge": "f = 0.5 erfc((rho - 1) R_eq / (sqrt(2) w))",
            "edge_width_mm": EDGE_WIDTH_MM,
            "patterns": {"homogeneous": "C0", "rim": "C0 (0.25 + 0.75 rho^2)",
                         "central_max": "C0 (1 - 0.75 rho^2)"},
            "gd_mean_D1_mM": "0.03 + 0.12 (dose / 100 mg/kg) U(0.6, 1.0), within 0.03-0.15",
            "d8_over_d1_range": list(D8_FACTOR_RANGE),
            "gtv": "D0-grid voxels with rho <= 1",
        },
        "partial_volume": "R1 = sum f_i R1_i / sum f_i ; M0 = sum f_i M0_i ; lesion fraction "
                          "replaces tissue (tissue fractions scaled by 1 - f_L)",
        "csf_fraction": "clip(gaussian(brain_mask, sigma=1 mm) - GM - WM, 0, 1)",
        "b1_field": {"model": "k = edge + gain exp(-q/2) + tilt x_R / 70 mm, "
                              "q = sum(((x - c) / s)^2), object (head-fixed) coordinates",
                     "edge": B1_EDGE, "gain": B1_CENTRE_GAIN, "centre_mm": list(B1_CENTRE_MM),
                     "width_mm": list(B1_WIDTH_MM)},
        "receive_bias": {"model": "1 + a tanh(d . (y - y_c) / L), scanner coordinates",
                         "a": RX_AMPLITUDE, "L_mm": RX_LENGTH_MM,
                         "y_c_mm": anat.centroid_mm.round(6).tolist()},
        "poses": "transforms.json: object RAS mm -> scanner RAS mm, per session and image kind",
        "participants_detail": part_info,
    }


def make_dataset(path, *, participants: int = 3, resolution_mm: int = 2, snr: float = 100.0,
                 seed: int = 20201, truth_dir=None) -> DRO:
    """Generate the digital reference object: raw BIDS + contours + truth.

    Parameters
    ----------
    path : str or os.PathLike
        Root of the raw BIDS dataset to create (must not exist or be empty).
    participants : int, optional
        Number of participants (>= 1).  The last one is the placebo when there are two or
        more; see the module docstring for the roles.
    resolution_mm : int, optional
        Isotropic voxel size of the scanner grid in mm, 1 or 2 (grid of nilearn's MNI152
        template at that resolution).
    snr : float, optional
        Signal-to-noise ratio: mean white-matter magnitude of the VFA image with the highest
        white-matter signal divided by the per-channel noise standard deviation (one sigma
        per session).  ``float("inf")`` writes noise-free images.
    seed : int, optional
        Seed of the ``numpy`` random generator; the output is a deterministic function of
        ``(participants, resolution_mm, snr, seed)``.
    truth_dir : str or os.PathLike, optional
        Where to write the truth (must not be inside ``path``).  Default:
        ``Path(path).parent / (Path(path).name + "_truth")``.

    Returns
    -------
    DRO
        Paths of the raw dataset, the contours derivatives dataset and the truth.

    Raises
    ------
    ValueError
        For ``resolution_mm`` other than 1 or 2, ``participants < 1``, ``snr <= 0`` or a
        ``truth_dir`` inside the raw dataset.
    FileExistsError
        If ``path`` or ``truth_dir`` exists and is not an empty directory.
    """
    if isinstance(resolution_mm, bool) or resolution_mm not in (1, 2):
        raise ValueError(f"resolution_mm must be 1 or 2, got {resolution_mm!r}")
    resolution_mm = int(resolution_mm)
    if isinstance(participants, bool) or int(participants) != participants or participants < 1:
        raise ValueError(f"participants must be an integer >= 1, got {participants!r}")
    participants = int(participants)
    snr = float(snr)
    if not snr > 0:
        raise ValueError(f"snr must be > 0 (or inf for noise-free images), got {snr!r}")
    bids_dir = Path(path).absolute()
    truth = (Path(truth_dir) if truth_dir is not None
             else bids_dir.parent / (bids_dir.name + "_truth")).absolute()
    if truth == bids_dir or bids_dir in truth.parents:
        raise ValueError(f"truth_dir {truth} must be outside the raw dataset {bids_dir}")
    _prepare_dir(bids_dir, "BIDS directory")
    _prepare_dir(truth, "truth directory")
    contours_dir = bids_dir / "derivatives" / "contours"

    anat = _anatomy()
    shape, affine = _grid(resolution_mm)
    children = np.random.SeedSequence(seed).spawn(participants)
    roles = _participant_roles(participants)

    parts = []
    rngs = []
    for idx in range(1, participants + 1):
        rng = np.random.default_rng(children[idx - 1])
        parts.append(_make_participant(idx, roles[idx - 1], rng, anat))
        rngs.append(rng)

    _write_raw_top(bids_dir, parts, seed, resolution_mm, snr)
    _write_contours_top(contours_dir)

    lesion_rows: list[list[object]] = []
    transforms: dict[str, dict] = {}
    sigmas: dict[str, dict[str, float]] = {}
    sigmas_mp2rage: dict[str, dict[str, float]] = {}
    part_info: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=2) as io_pool, ThreadPoolExecutor(3) as cpu:
        save = _Saver(io_pool)
        try:
            ctx = _Context(anat, shape, affine, bids_dir, contours_dir, truth, snr, save, cpu,
                           _sample_fractions(anat, shape, affine, np.eye(4), cpu))
            for part, rng in zip(parts, rngs, strict=True):
                sub = f"sub-{part.label}"
                ref, scales, rows = _write_reference(ctx, part)
                lesion_rows.extend(rows)
                transforms[sub] = {key: {k: pose.tolist() for k, pose in poses.items()}
                                   for key, poses in part.poses.items()}
                sigmas[sub] = {}
                for tp in part.timepoints:
                    acq_sigmas = _write_timepoint(ctx, part, rng, tp, ref, scales[tp.key])
                    sigmas[sub][tp.key] = acq_sigmas["VFA"]
                    if "MP2RAGE" in acq_sigmas:
                        sigmas_mp2rage.setdefault(sub, {})[tp.key] = acq_sigmas["MP2RAGE"]
                first = {}
                for tp in part.timepoints:
                    first.setdefault(tp.session, tp)
                _write_tsv(
                    bids_dir / sub / f"{sub}_sessions.tsv",
                    ["session_id", "acq_time", "hours_post_injection"],
                    [[f"ses-{ses}", part.acq_time[tp.key], part.hours_post_injection[tp.key]]
                     for ses, tp in first.items()],
                )
                if part.role.design == "same-session":
                    # Pre and post images share the session: their times go in scans.tsv.
                    _write_tsv(
                        bids_dir / sub / f"ses-{BASELINE_SESSION}"
                        / f"{sub}_ses-{BASELINE_SESSION}_scans.tsv",
                        ["filename", "acq_time", "hours_post_injection"],
                        [[name, part.acq_time[tp.key], part.hours_post_injection[tp.key]]
                         for tp in part.timepoints for name in _image_names(part, tp)],
                    )
                part_info[sub] = _participant_info(part)
                del ref
        finally:
            save.close()

    _write_tsv(truth / "lesions.tsv", LESION_COLUMNS, lesion_rows)
    _write_json(truth / "transforms.json", transforms)
    info = _truth_json(seed, participants, resolution_mm, shape, affine, snr, sigmas, anat,
                       part_info)
    info["noise_sigma_mp2rage"] = sigmas_mp2rage
    _write_json(truth / "truth.json", info)
    return DRO(bids_dir=bids_dir, contours_dir=contours_dir, truth_dir=truth)
