"""Physical and acquisition constants of the digital reference object.

Their sources are in the package docstring (:mod:`bids_agquant.dro`) and are repeated in the
``truth.json`` of every generated dataset.  They live in one module because the truth record
and the BIDS sidecars need nearly all of them, while each concern (anatomy, lesions, signals)
needs only a few: one leaf module keeps the imports acyclic.
"""

from __future__ import annotations

#: Defaults of :func:`bids_agquant.dro.make_dataset` (and of ``bids-agquant-demo``).
DEFAULT_PARTICIPANTS, DEFAULT_RESOLUTION_MM, DEFAULT_SNR, DEFAULT_SEED = 3, 2, 100.0, 20201

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

#: Raw B1+ representations (BIDS suffixes) of the extra participants, one each (``dro.b1``).
RAW_B1_FORMATS = ("TB1TFL", "TB1AFI", "TB1DAM", "TB1SRGE")

AGENT_DOSES_EXTRA_MG_PER_KG = (15.0, 30.0, 75.0)
PRIMARY_TUMORS = ("NSCLC", "melanoma", "breast", "colon")
WEIGHT_RANGE_KG = (55.0, 95.0)
MANUFACTURER = "bids-agquant DRO"
