"""Raw B1+ acquisitions of the DRO, as a scanner writes them (BIDS ``fmap/``).

A participant's ``b1_format`` picks the representation of its session's B1+: a computed
``TB1map`` (fraction or percent), or the raw images of one of the methods the app computes B1+
from. The images are made from the truth B1+, T1 and apparent M0 on the T1-mapping pose with
the forward models of :mod:`bids_agquant.qmri.b1` / :mod:`bids_agquant.qmri.sa2rage`, plus
Rician noise at the dataset's SNR; each file gets the sidecar keys the BIDS qMRI appendix
lists for its suffix.
"""

from __future__ import annotations

import numpy as np

from .constants import FIELD_STRENGTH_T, MANUFACTURER, RAW_B1_FORMATS, TE_S
from .signals import _magnitude_noise

__all__ = ["RAW_B1_FORMATS", "b1_file_stem", "raw_b1_images"]

#: Siemens tfl_b1map: nominal flip of the preparation pulse (the famp image's FlipAngle) and
#: the readout flip of its anatomical image, degrees.
TFL_PREP_FLIP_DEG = 80.0
TFL_READOUT_FLIP_DEG = 8.0
#: AFI protocol of Yarnykh (2007): 60 degrees, TR1 / TR2 = 20 / 100 ms.
AFI_FLIP_DEG, AFI_TR_S = 60.0, (0.020, 0.100)
#: Double-angle method: 60 / 120 degrees, fully relaxed (long TR).
DAM_FLIP_DEG = (60.0, 120.0)
DAM_TR_S = 10.0
#: SA2RAGE protocol of Marques's reference implementation (DemoForR1Correction.m): TR 2.4 s,
#: echo spacing 2.75 ms, delays 47 ms / 1.8 s, flips 4 / 10 degrees, NumberShots from a 128
#: matrix with 6/8 partial Fourier, iPAT 3 and 18 reference lines (BIDS qMRI appendix).
SA2RAGE_PROTOCOL = {
    "repetition_time_preparation_s": 2.4,
    "repetition_time_excitation_s": 0.00275,
    "inversion_times_s": (0.047, 1.8),
    "flip_angles_deg": (4.0, 10.0),
    "shots_before": 128 * 0.25 / 3 + 6.0,
    "shots_after": 128 * 0.5 / 3 + 6.0,
}


def raw_b1_images(fmt: str, kappa: np.ndarray, t1_s: np.ndarray, m0: np.ndarray,
                  support: np.ndarray, snr: float, rng: np.random.Generator):
    """The files of one raw B1+ acquisition: ``[(entities, data, dtype, sidecar), ...]``.

    Parameters
    ----------
    fmt : str
        One of :data:`RAW_B1_FORMATS`.
    kappa : ndarray
        Truth B1+ (fraction of nominal) on the acquisition's grid and pose.
    t1_s, m0 : ndarray
        Truth T1 (s) and apparent M0 (receive field included) on the same grid.
    support : ndarray of bool
        The head (tissue) support; a tfl_b1map famp image is noise outside it.
    snr : float
        White-matter SNR of the dataset; each image's noise sigma is its head median / snr.
    rng : numpy.random.Generator
    """
    from ..qmri import b1 as qb1

    t1_s = np.where(t1_s > 0, t1_s, 1.0)  # no tissue: M0 = 0 gives no signal at any T1
    common = {"MagneticFieldStrength": FIELD_STRENGTH_T, "Manufacturer": MANUFACTURER,
              "EchoTime": TE_S}

    def noisy(img):
        sigma = float(np.median(img[support])) / snr if support.any() else 1.0
        return _magnitude_noise(img.astype(np.float32), sigma, rng)

    if fmt == "TB1TFL":
        anat = m0 * np.float32(np.sin(np.deg2rad(TFL_READOUT_FLIP_DEG)))
        famp = 10.0 * TFL_PREP_FLIP_DEG * kappa
        # Siemens writes integers: inside the head famp with ~1 % noise, outside it noise.
        famp = np.where(support, famp * (1 + 0.01 * rng.standard_normal(kappa.shape)),
                        rng.uniform(0.0, 1800.0, kappa.shape))
        side = {**common, "SequenceName": "tfl_b1map", "FlipAngle": TFL_PREP_FLIP_DEG}
        return [({"acquisition": "anat"}, noisy(anat), np.float32, side),
                ({"acquisition": "famp"}, np.rint(np.clip(famp, 0, 4095)), np.uint16, side)]
    if fmt == "TB1AFI":
        s1, s2 = qb1.afi_signals(t1_s, kappa, AFI_FLIP_DEG, *AFI_TR_S, m0=m0)
        return [({"acquisition": f"tr{n}"}, noisy(s), np.float32,
                 {**common, "FlipAngle": AFI_FLIP_DEG, "RepetitionTimeExcitation": tr,
                  "SequenceName": "synthetic AFI (Yarnykh 2007)"})
                for n, (s, tr) in enumerate(zip((s1, s2), AFI_TR_S, strict=True), start=1)]
    if fmt == "TB1DAM":
        s_a, s_2a = qb1.dam_signals(kappa, DAM_FLIP_DEG[0], m0=m0)
        return [({"flip": str(n)}, noisy(np.abs(s)), np.float32,
                 {**common, "FlipAngle": flip, "RepetitionTime": DAM_TR_S,
                  "SequenceName": "synthetic double-angle GRE"})
                for n, (s, flip) in enumerate(zip((s_a, s_2a), DAM_FLIP_DEG, strict=True),
                                              start=1)]
    if fmt == "TB1SRGE":
        from ..qmri.sa2rage import SA2RAGEProtocol, sa2rage_signals

        protocol = SA2RAGEProtocol(**SA2RAGE_PROTOCOL)
        s1, s2 = sa2rage_signals(t1_s, protocol, b1=kappa, m0=m0)
        shots = [round(SA2RAGE_PROTOCOL["shots_before"], 4),
                 round(SA2RAGE_PROTOCOL["shots_after"], 4)]
        # The first readout changes sign near B1 = 1: magnitude and phase (a smooth coil
        # phase common to both readouts, plus pi where the signal is negative).
        coil = np.float32(0.4) + np.linspace(0, 1.5, kappa.shape[0], dtype=np.float32)[
            :, None, None] * np.ones(kappa.shape, np.float32)
        files = []
        for n, s in enumerate((s1, s2), start=1):
            side = {**common, "FlipAngle": SA2RAGE_PROTOCOL["flip_angles_deg"][n - 1],
                    "InversionTime": SA2RAGE_PROTOCOL["inversion_times_s"][n - 1],
                    "RepetitionTimePreparation":
                        SA2RAGE_PROTOCOL["repetition_time_preparation_s"],
                    "RepetitionTimeExcitation": SA2RAGE_PROTOCOL["repetition_time_excitation_s"],
                    "NumberShots": shots, "SequenceName": "synthetic SA2RAGE"}
            phase = np.angle(np.exp(1j * (coil + np.where(s < 0, np.pi, 0.0))))
            files += [({"flip": str(n), "inversion": str(n), "part": "mag"}, noisy(np.abs(s)),
                       np.float32, side),
                      ({"flip": str(n), "inversion": str(n), "part": "phase"},
                       phase.astype(np.float32), np.float32, {**side, "Units": "rad"})]
        return files
    raise ValueError(f"unknown raw B1+ format {fmt!r} (known: {', '.join(RAW_B1_FORMATS)})")


def b1_file_stem(sub: str, ses: str, entities: dict, suffix: str) -> str:
    """BIDS file name (without extension) of one raw B1+ image."""
    order = (("acquisition", "acq"), ("flip", "flip"), ("inversion", "inv"), ("part", "part"))
    parts = [f"{sub}_ses-{ses}"] + [f"{short}-{entities[key]}" for key, short in order
                                     if key in entities]
    return "_".join(parts) + f"_{suffix}"
