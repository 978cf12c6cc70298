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

# Modules by concern; each imports only modules before it in this order (no cycles):
# constants, anatomy, lesions, participants, signals, writer, dataset.  The names below are
# the public API plus what tests use (MP2RAGE_PROTOCOL, _participant_roles).
from .constants import (
    BASELINE_SESSION,
    M0_REL,
    R1_AGUIX_PER_MM_PER_S,
    SESSIONS,
    T1_S,
    T1W_FLIP_DEG,
    T1W_TR_S,
    TE_S,
    VFA_FLIP_DEG,
    VFA_TR_S,
)
from .constants import MP2RAGE_PROTOCOL as MP2RAGE_PROTOCOL
from .dataset import DRO, make_dataset
from .participants import _participant_roles as _participant_roles

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
