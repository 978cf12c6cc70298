"""Signal model of the DRO: parametric maps (R1, M0, concentration) on a pose, B1+ and receive
fields, SPGR and MP2RAGE signals, and the noise."""

from __future__ import annotations

import math

import numpy as np

from .anatomy import _axis_coords, _sample_fractions
from .constants import (
    B1_CENTRE_GAIN,
    B1_CENTRE_MM,
    B1_EDGE,
    B1_WIDTH_MM,
    LESION_M0_REL,
    M0_REL,
    PHASE_OFFSET_RAD,
    PHASE_RAMP_MM,
    RX_AMPLITUDE,
    RX_LENGTH_MM,
    T1_S,
)
from .lesions import _lesion_boxes
from .participants import _Participant


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


def _wm_mean(fields: _Fields, img: np.ndarray) -> float:
    """Mean magnitude of ``img`` over white matter: the signal of the SNR definition.

    White matter is ``WM fraction >= 0.9`` without lesion (``lesion fraction < 0.01``), so
    that neither partial volume nor the agent changes the reference signal.
    """
    return float(np.abs(img[(fields.wm >= 0.9) & (fields.lesion_f < 0.01)]).mean())


def _magnitude_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``img`` plus complex Gaussian noise of ``sigma`` per channel (Rician).

    The real channel is drawn before the imaginary one: the order is part of the dataset's
    determinism.  ``sigma == 0`` draws nothing (noise-free dataset).
    """
    if sigma == 0.0:
        return img.astype(np.float32)
    re = img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    im = np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.hypot(re, im)

def _mp2rage_images(s1, s2, sigma, rng, rx_direction, affine, shape, phase_units):
    """Complex MP2RAGE signals with a shared background phase and complex Gaussian noise →
    magnitudes, phases (radians or the Siemens -4096..4095 scale) and the scanner UNIT1."""
    from ..qmri.mp2rage import UNIT1_SCALE, uni_from_signals

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
