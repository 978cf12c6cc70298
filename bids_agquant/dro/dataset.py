"""Generation of the DRO: :func:`make_dataset` draws the participants, then writes the raw
BIDS dataset, the contours and the truth timepoint by timepoint."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .anatomy import _Anatomy, _anatomy, _grid, _sample_fractions
from .b1 import RAW_B1_FORMATS, b1_file_stem, raw_b1_images
from .constants import (
    BASELINE_SESSION,
    DEFAULT_PARTICIPANTS,
    DEFAULT_RESOLUTION_MM,
    DEFAULT_SEED,
    DEFAULT_SNR,
    FIELD_STRENGTH_T,
    MP2RAGE_PROTOCOL,
    R1_AGUIX_PER_MM_PER_S,
    SIGNAL_SCALE,
    T1W_FLIP_DEG,
    T1W_TR_S,
    TE_S,
    VFA_FLIP_DEG,
    VFA_TR_S,
)
from .lesions import _concentration_factor, _max_feret_mm
from .participants import _make_participant, _Participant, _participant_roles, _Timepoint
from .signals import (
    _b1_field,
    _Fields,
    _inverse,
    _magnitude_noise,
    _mp2rage_images,
    _receive_field,
    _spgr,
    _wm_mean,
)
from .writer import (
    _image_names,
    _intended_for,
    _participant_info,
    _prepare_dir,
    _Saver,
    _sidecar_vfa,
    _truth_json,
    _write_contours_top,
    _write_json,
    _write_raw_top,
    _write_tsv,
)


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


@dataclass
class _Context:
    """What every step of one :func:`make_dataset` call shares: grid, folders, pools."""

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


def _write_timepoint(ctx: _Context, part: _Participant, rng: np.random.Generator,
                     tp: _Timepoint, ref: _Fields, c0: dict[int, float]) -> dict[str, float]:
    """Synthesise and write the T1w, VFA / MP2RAGE (and B1) images of one timepoint.

    Returns the noise sigma per acquisition (``"VFA"`` also applies to the T1w;
    ``"MP2RAGE"``).
    """
    from ..qmri.mp2rage import MP2RAGEProtocol, mp2rage_signals

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
    b1_kappa = raw_b1_inputs = None

    def fields_at(kind):
        fields = _Fields(ctx.anat, part, shape, affine, poses[kind], pool=ctx.cpu)
        kappa = _b1_field(shape, affine, poses[kind], part.b1_tilt)
        r1 = fields.r1_pre + r1_agent * fields.concentration(c0).astype(np.float32)
        m0_app = (np.float32(SIGNAL_SCALE) * rx * fields.m0).astype(np.float32)
        save(truth_dir / f"{stem}_space-{kind}_B1map.nii.gz", kappa, affine)
        save(truth_dir / f"{stem}_space-{kind}_T1map.nii.gz", _inverse(r1), affine)
        save(truth_dir / f"{stem}_space-{kind}_M0map.nii.gz", m0_app, affine)
        return fields, kappa, r1, m0_app

    vfa_clean = None
    if "VFA" in part.kinds:
        # VFA: noise-free images first; sigma from their white-matter signal.
        vfa, kappa, r1v, m0_app = fields_at("VFA")
        vfa_clean = [_spgr(m0_app, r1v, kappa * np.float32(math.radians(fa)), VFA_TR_S)
                     for fa in VFA_FLIP_DEG]
        sigmas["VFA"] = max(_wm_mean(vfa, img) for img in vfa_clean) / ctx.snr
        b1_kappa = kappa
        if part.b1_format in RAW_B1_FORMATS:  # raw B1+ images need the truth on this pose
            raw_b1_inputs = (kappa, _inverse(r1v), m0_app, vfa.support >= 0.5)
        del vfa, r1v, m0_app

    if "MP2RAGE" in part.kinds:
        protocol = MP2RAGEProtocol(**MP2RAGE_PROTOCOL)
        mp, kappa_m, r1m, m0m = fields_at("MP2RAGE")
        t1m = np.where(r1m > 1e-3, 1.0 / np.maximum(r1m, 1e-3), 5.0)
        s1, s2 = mp2rage_signals(t1m, protocol, b1=kappa_m, m0=m0m)
        sigma_m = _wm_mean(mp, s2) / ctx.snr
        sigmas["MP2RAGE"] = sigma_m
        if b1_kappa is None:
            b1_kappa = kappa_m
            if part.b1_format in RAW_B1_FORMATS:
                raw_b1_inputs = (kappa_m, t1m, m0m, mp.support >= 0.5)
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
        sigmas["VFA"] = _wm_mean(t1w, t1w_clean) / ctx.snr
    sigma = sigmas["VFA"]
    del t1w, r1t, kappa_t

    save(anat_dir / f"{stem}_T1w.nii.gz", _magnitude_noise(t1w_clean, sigma, rng), affine)
    _write_json(anat_dir / f"{stem}_T1w.json", {
        "FlipAngle": T1W_FLIP_DEG, "RepetitionTime": T1W_TR_S, "EchoTime": TE_S,
        "MagneticFieldStrength": FIELD_STRENGTH_T,
    })
    del t1w_clean
    b1_id = f"B1sub{part.label}ses{ses}" if part.b1_format else None
    if vfa_clean is not None:
        for n, (fa, img) in enumerate(zip(VFA_FLIP_DEG, vfa_clean, strict=True), start=1):
            save(anat_dir / f"{stem}_flip-{n}_VFA.nii.gz", _magnitude_noise(img, sigma, rng),
                 affine)
            _write_json(anat_dir / f"{stem}_flip-{n}_VFA.json", _sidecar_vfa(fa, b1_id))
    if raw_b1_inputs is not None and tp.ceagent is None:
        # Raw B1+ images, from which the app computes the map.
        fmap_dir = ctx.bids_dir / sub / f"ses-{ses}" / "fmap"
        for entities, data, dtype, side in raw_b1_images(part.b1_format, *raw_b1_inputs,
                                                         ctx.snr, rng):
            name = b1_file_stem(sub, ses, entities, part.b1_format)
            save(fmap_dir / f"{name}.nii.gz", data, affine, dtype)
            _write_json(fmap_dir / f"{name}.json", {
                **side, "B1FieldIdentifier": b1_id, "IntendedFor": _intended_for(part, ses)})
    elif part.b1_units and tp.ceagent is None:
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


def make_dataset(path, *, participants: int = DEFAULT_PARTICIPANTS,
                 resolution_mm: int = DEFAULT_RESOLUTION_MM, snr: float = DEFAULT_SNR,
                 seed: int = DEFAULT_SEED, truth_dir=None) -> DRO:
    """Generate the digital reference object: raw BIDS + contours + truth.

    Parameters
    ----------
    path : str or os.PathLike
        Root of the raw BIDS dataset to create (must not exist or be empty).
    participants : int, optional
        Number of participants (>= 1).  The last one is the placebo when there are two or
        more; see the package docstring (:mod:`bids_agquant.dro`) for the roles.
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
