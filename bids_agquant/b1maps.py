"""A session's B1+ map as a fraction of nominal, from any BIDS representation.

Loads the files of a :class:`~bids_agquant.plan.B1Source` and calls the pure functions of
:mod:`bids_agquant.qmri.b1` / :mod:`bids_agquant.qmri.sa2rage`; the map stays on the grid of
its own acquisition (the T1 fits resample it onto theirs). The pre-flight check and the
workflow's ``ComputeB1`` node both use :func:`compute_b1`, so the map checked is the map used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nb
import numpy as np

from .errors import EX_DATAERR, InputError
from .plan import B1Source

#: How each representation becomes B1 (written into the sidecar of the computed map).
EQUATIONS = {
    "TB1map": "B1 = the stored map converted to a fraction of nominal (see B1UnitsDecision)",
    "TB1TFL": "B1 = famp / (10 FlipAngle); famp = 10 x the achieved flip of the preparation "
              "pulse in degrees (Siemens tfl_b1map)",
    "TB1AFI": "alpha = arccos((r n - 1) / (n - r)), r = S(TR2) / S(TR1), n = TR2 / TR1; "
              "B1 = alpha / FlipAngle",
    "TB1DAM": "alpha = arccos(S(2 alpha) / (2 S(alpha))); B1 = alpha / FlipAngle(flip-1)",
    "TB1SRGE": "B1 from the ratio S1 / S2 of the two readouts by look-up in the SA2RAGE "
               "steady-state signal model (saturation scaled by B1), at T1 = {t1:g} s",
}
REFERENCES = {
    "TB1TFL": "Chung S, Kim D, Breton E, Axel L. Magn Reson Med 2010;64:439-446",
    "TB1AFI": "Yarnykh VL. Magn Reson Med 2007;57:192-200",
    "TB1DAM": "Insko EK, Bolinger L. J Magn Reson A 1993;103:82-85",
    "TB1SRGE": "Eggenschwiler F, Kober T, Magill AW, Gruetter R, Marques JP. Magn Reson Med "
               "2012;67:1609-1619",
}


def equation(suffix: str) -> str:
    """How ``suffix`` becomes B1 (the SA2RAGE text with its assumed T1)."""
    from .qmri.sa2rage import NOMINAL_T1_S

    return EQUATIONS[suffix].format(t1=NOMINAL_T1_S)


@dataclass
class B1Map:
    """A B1+ fraction map on its acquisition's grid, and how it was obtained."""

    fraction: np.ndarray
    image: nb.Nifti1Image  # grid (affine, header) of the map
    decision: str
    warnings: list[str] = field(default_factory=list)
    equation: str = ""


def _volume(path) -> tuple[nb.Nifti1Image, np.ndarray]:
    img = nb.load(path)
    return img, np.asarray(img.dataobj, dtype=np.float64).reshape(img.shape[:3])


def _same_grid(a: nb.Nifti1Image, b: nb.Nifti1Image, path, suffix: str) -> None:
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise InputError(f"{path}: the two {suffix} images must share one voxel grid (shape "
                         f"{b.shape[:3]} vs {a.shape[:3]}); they are combined voxel by voxel",
                         EX_DATAERR)


def compute_b1(source: B1Source, units_override: str | None = None) -> B1Map:
    """The B1+ fraction map of ``source``.

    Parameters
    ----------
    source : B1Source
        The session's B1+ files and sidecar values (from the plan).
    units_override : str, optional
        ``--b1-units`` (fraction, percent, degrees-x10, per-mille): the units of a given
        ``TB1map``, overriding its sidecar and the values.

    Returns
    -------
    B1Map
        Fraction of nominal (0 where undefined), float32, on the grid of the map's file.

    Raises
    ------
    InputError
        (65) The units cannot be decided, or the acquisition parameters are invalid; the
        message names the file and the key.
    """
    from .qmri import b1 as qb1

    suffix = source.suffix
    if suffix == "TB1map":
        path = source.files[0]
        img, values = _volume(path)
        nominal = source.flip_angles_deg[0] if source.flip_angles_deg else None
        try:
            decision = qb1.decide_b1_units(values, source.units, override=units_override,
                                           nominal_flip_deg=nominal)
        except qb1.B1UnitsError as exc:
            raise InputError(f"{path}: {exc}", EX_DATAERR) from None
        fraction = qb1.to_fraction(values, decision, nominal_flip_deg=nominal)
        text = decision.describe()
        return B1Map(fraction.astype(np.float32), img, text, list(decision.warnings),
                     equation(suffix))
    first_img, first = _volume(source.files[0])
    second_img, second = _volume(source.files[1])
    for path in source.files[1:]:
        _same_grid(first_img, nb.load(path), path, suffix)
    if suffix == "TB1TFL":
        flip = source.flip_angles_deg[0]
        fraction = qb1.b1_from_tfl(second, flip)
        text = f"TB1TFL: B1 = famp / (10 x FlipAngle {flip:g} deg) from {source.files[1].name}"
        img = second_img
    elif suffix == "TB1AFI":
        (tr1, tr2), flip = source.repetition_times_s, source.flip_angles_deg[0]
        fraction = qb1.b1_from_afi(first, second, tr1, tr2, flip)
        text = (f"TB1AFI: actual flip-angle imaging, TR1 {tr1 * 1e3:g} ms, TR2 {tr2 * 1e3:g} "
                f"ms, nominal FlipAngle {flip:g} deg")
        img = first_img
    elif suffix == "TB1DAM":
        flip = source.flip_angles_deg[0]
        fraction = qb1.b1_from_dam(first, second, flip)
        text = f"TB1DAM: double angle {flip:g}/{source.flip_angles_deg[1]:g} deg"
        img = first_img
    elif suffix == "TB1SRGE":
        fraction, text = _sa2rage(source, first, second)
        img = first_img
    else:  # the plan only makes the suffixes above
        raise ValueError(f"unknown B1+ representation {suffix!r}")
    return B1Map(np.asarray(fraction, dtype=np.float32), img, text, list(source.notes),
                 equation(suffix))


def _sa2rage(source: B1Source, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, str]:
    from .qmri import sa2rage

    tr_prep, tr_exc = source.repetition_times_s
    try:
        protocol = sa2rage.SA2RAGEProtocol(
            repetition_time_preparation_s=tr_prep, repetition_time_excitation_s=tr_exc,
            inversion_times_s=tuple(source.inversion_times_s),
            flip_angles_deg=tuple(source.flip_angles_deg),
            shots_before=source.number_shots[0], shots_after=source.number_shots[1])
    except ValueError as exc:
        raise InputError(f"{source.files[0]}: SA2RAGE parameters {exc}", EX_DATAERR) from None
    crossing = sa2rage.sign_change_b1(protocol)
    if len(source.files) == 4:
        from .qmri.mp2rage import phase_to_radians

        phase1, _ = phase_to_radians(_volume(source.files[2])[1], source.units)
        phase2, _ = phase_to_radians(_volume(source.files[3])[1], source.units)
        # The coil and B0 phase is common to both readouts: their difference is 0 or pi.
        s1 = np.abs(s1) * np.sign(np.cos(phase1 - phase2))
        sign_text = "first readout signed by the phase difference of the part-phase images"
    elif np.isfinite(crossing) and not (s1 < 0).any():
        raise InputError(
            f"{source.files[0]}: magnitude-only SA2RAGE is ambiguous: with these parameters "
            f"the first readout's signal changes sign at B1+ {crossing:.3g}, so each magnitude "
            "ratio fits two B1+ values; add the part-phase images of both readouts "
            "(*_flip-1_inv-1_part-phase_TB1SRGE, *_flip-2_inv-2_part-phase_TB1SRGE), or the "
            "scanner's B1+ map as *_TB1map", EX_DATAERR)
    else:
        sign_text = "signed images"
    fraction, _valid = sa2rage.b1_from_sa2rage(s1, np.abs(s2), protocol,
                                               t1_s=sa2rage.NOMINAL_T1_S)
    sensitivity = sa2rage.sa2rage_t1_sensitivity(protocol)
    text = (f"TB1SRGE: SA2RAGE look-up at T1 {sa2rage.NOMINAL_T1_S:g} s (B1 error at most "
            f"{100 * sensitivity:.1f} % for T1 0.8-2.5 s at B1 1), {sign_text}")
    return fraction, text


def b1_on_grid(b1_image: nb.Nifti1Image, reference: nb.Nifti1Image) -> np.ndarray:
    """A B1+ fraction image resampled onto ``reference``'s grid (0 outside its field of view).

    The map comes from the same session: scanner coordinates are shared, so the headers alone
    place it (no registration).
    """
    from nilearn.image import resample_to_img

    resampled = resample_to_img(b1_image, reference, interpolation="continuous",
                                force_resample=True, copy_header=True, fill_value=0.0)
    return np.asarray(resampled.dataobj, dtype=np.float64).reshape(reference.shape[:3])


def fraction_image(b1: B1Map) -> nb.Nifti1Image:
    """The fraction map as a NIfTI image on its acquisition's grid."""
    return nb.Nifti1Image(b1.fraction, b1.image.affine)
