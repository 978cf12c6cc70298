"""Uptake quantities: ΔR1, Gd concentration, mass concentration, %ID/g, signal enhancement.

Pure numpy functions (scalars or arrays, broadcasting). Units are in the argument names:

* ``_per_s`` 1/s, ``_mM`` mmol/L of Gd (per Gd ion, not per particle),
  ``_per_mM_per_s`` mM⁻¹ s⁻¹, ``_g_per_mol`` g/mol (1 kDa = 1000 g/mol),
  ``_mg_per_L`` mg/L (= µg/mL), ``_mg_per_kg`` mg/kg body weight, ``_kg`` kg.

Equations (see ``shared/reference/seeds-facts.md`` §1.4–1.7):

* ``ΔR1 = R1_post − R1_pre`` and ``C[mM Gd] = ΔR1 / r1`` (r1 per Gd ion) — negative values
  are **kept** (noise / misregistration; never clip them before statistics);
* ``C_mass[mg/L] = C[mM Gd] · M_particle[g/mol] / n_Gd`` (1 mM Gd with 15 Gd per 20 kDa
  particle → 4/3 g/L; with 10 Gd per 10 kDa → 1 g/L);
* ``%ID/g = 100 · C_mass[mg/L] · 1e-3 / (dose[mg/kg] · weight[kg])`` assuming a tissue
  density of 1 kg/L (so mg/L = mg/kg, and 1e-3 converts to mg/g);
* ``SE[%] = 100 · (S_post − S_pre) / S_pre``;
* dose normalisation ``value · reference_dose / dose``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..config import DEFAULT_REFERENCE_DOSE_MG_PER_KG

__all__ = [
    "delta_r1",
    "dose_normalised",
    "gd_concentration_mM",
    "gd_dose_umol_per_kg",
    "mass_concentration_mg_per_L",
    "percent_injected_dose_per_g",
    "masked_signal_enhancement",
    "signal_enhancement_percent",
    "uptake_maps",
]

#: A resampled validity mask below this means the voxel borrows from invalid neighbours.
RESAMPLED_VALID_THRESHOLD = 0.999


def _positive_scalar(value: float, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not np.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return out


def _dose_or_nan(dose_mg_per_kg: ArrayLike | None, name: str = "dose_mg_per_kg") -> np.ndarray:
    """Dose as float64 with 0 / None / NaN / +inf → NaN (placebo or missing); negative → error.

    +inf is not a dose: dividing by it gave 0 %ID/g, a plausible-looking number.
    """
    if dose_mg_per_kg is None:
        return np.asarray(np.nan)
    dose = np.asarray(dose_mg_per_kg, dtype=np.float64)
    if np.any(dose < 0):
        raise ValueError(f"{name} must be >= 0 (0 means placebo), got {dose_mg_per_kg!r}")
    return np.where((dose > 0) & np.isfinite(dose), dose, np.nan)


def delta_r1(r1_post_per_s: ArrayLike, r1_pre_per_s: ArrayLike) -> np.ndarray:
    """Change in longitudinal relaxation rate, ``R1_post − R1_pre``.

    Parameters
    ----------
    r1_post_per_s, r1_pre_per_s : array_like
        R1 (1/s) after and before the agent, on the same grid.

    Returns
    -------
    numpy.ndarray of float64
        ΔR1 in 1/s. Negative values are kept. This is a plain subtraction: invalid-fit
        sentinels (R1 = 0 from :func:`bids_agquant.qmri.vfa.fit_vfa_linear`) must be masked
        by the caller (e.g. set to NaN) before or after the call.
    """
    return np.asarray(r1_post_per_s, dtype=np.float64) - np.asarray(r1_pre_per_s, dtype=np.float64)


def gd_concentration_mM(delta_r1_per_s: ArrayLike, r1_per_mM_per_s: float) -> np.ndarray:
    """Gd concentration from ΔR1 and the relaxivity: ``C = ΔR1 / r1``.

    Parameters
    ----------
    delta_r1_per_s : array_like
        ΔR1 in 1/s.
    r1_per_mM_per_s : float
        Longitudinal relaxivity **per Gd ion** in mM⁻¹ s⁻¹ (e.g. 8.9 for AGuIX with VFA at
        3 T, 6.7 with MP2RAGE). Must be > 0.

    Returns
    -------
    numpy.ndarray of float64
        Concentration in mmol/L of Gd (mM Gd). Negative values are kept.

    Raises
    ------
    ValueError
        If ``r1_per_mM_per_s`` is not a positive finite number.
    """
    r1 = _positive_scalar(r1_per_mM_per_s, "r1_per_mM_per_s (relaxivity)")
    return np.asarray(delta_r1_per_s, dtype=np.float64) / r1


def mass_concentration_mg_per_L(
    gd_mM: ArrayLike, particle_molar_mass_g_per_mol: float, gd_per_particle: float
) -> np.ndarray:
    """Convert a Gd concentration to a mass concentration of the particle.

    ``C_mass[mg/L] = C[mM Gd] / n_Gd · M[g/mol]`` (mmol of particles per L times g/mol
    gives mg/L).

    Parameters
    ----------
    gd_mM : array_like
        Concentration in mmol/L of Gd ions.
    particle_molar_mass_g_per_mol : float
        Molar mass of one particle in g/mol (10 kDa = 10000 g/mol).
    gd_per_particle : float
        Number of Gd ions per particle (10 in the NanoRad convention, 15 in NanoBrainMets).

    Returns
    -------
    numpy.ndarray of float64
        Mass concentration in mg/L (= µg/mL; divide by 1000 for mg/mL = g/L). Negative
        values are kept.

    Examples
    --------
    >>> float(mass_concentration_mg_per_L(1.0, 20000.0, 15))  # NanoBrainMets: 4/3 g/L
    1333.3333333333333
    >>> float(mass_concentration_mg_per_L(1.0, 10000.0, 10))  # NanoRad: 1 g/L
    1000.0
    """
    molar_mass = _positive_scalar(particle_molar_mass_g_per_mol, "particle_molar_mass_g_per_mol")
    n_gd = _positive_scalar(gd_per_particle, "gd_per_particle")
    return np.asarray(gd_mM, dtype=np.float64) * (molar_mass / n_gd)


def gd_dose_umol_per_kg(
    dose_mg_per_kg: ArrayLike, particle_molar_mass_g_per_mol: float, gd_per_particle: float
) -> np.ndarray:
    """Injected Gd dose per kg body weight from a particle mass dose.

    ``dose_Gd[µmol/kg] = dose[mg/kg] / M[g/mol] · n_Gd · 1000``.

    Parameters
    ----------
    dose_mg_per_kg : array_like
        Administered particle dose in mg/kg.
    particle_molar_mass_g_per_mol : float
        Molar mass of one particle in g/mol.
    gd_per_particle : float
        Number of Gd ions per particle.

    Returns
    -------
    numpy.ndarray of float64
        Gd dose in µmol/kg (100 mg/kg of a 10 kDa, 10-Gd particle → 100 µmol/kg).
    """
    molar_mass = _positive_scalar(particle_molar_mass_g_per_mol, "particle_molar_mass_g_per_mol")
    n_gd = _positive_scalar(gd_per_particle, "gd_per_particle")
    return np.asarray(dose_mg_per_kg, dtype=np.float64) / molar_mass * n_gd * 1000.0


def percent_injected_dose_per_g(
    mass_mg_per_L: ArrayLike, dose_mg_per_kg: ArrayLike | None, weight_kg: ArrayLike | None
) -> np.ndarray:
    """Percentage of the injected dose per gram of tissue (%ID/g).

    ``%ID/g = 100 · C_mass[mg/L] · 1e-3 / (dose[mg/kg] · weight[kg])``, assuming a tissue
    density of 1 kg/L (so 1 mg/L of tissue = 1e-3 mg/g).

    Parameters
    ----------
    mass_mg_per_L : array_like
        Particle mass concentration in mg/L.
    dose_mg_per_kg : array_like or None
        Administered dose in mg/kg. ``0``, ``None``, NaN or +inf (placebo / unknown) give
        NaN.
    weight_kg : array_like or None
        Body weight in kg. ``0``, ``None``, NaN or +inf (unknown) give NaN.

    Returns
    -------
    numpy.ndarray of float64
        %ID/g (60 mg/L, 100 mg/kg, 60 kg → 0.001 %ID/g). Negative values are kept.

    Raises
    ------
    ValueError
        If a dose or weight is negative.
    """
    dose = _dose_or_nan(dose_mg_per_kg)
    weight = _dose_or_nan(weight_kg, "weight_kg")
    injected_mg = dose * weight
    return 100.0 * np.asarray(mass_mg_per_L, dtype=np.float64) * 1e-3 / injected_mg


def signal_enhancement_percent(
    s_post: ArrayLike, s_pre: ArrayLike, min_pre: float = 0.0
) -> np.ndarray:
    """Relative signal enhancement, ``SE[%] = 100 · (S_post − S_pre) / S_pre``.

    Parameters
    ----------
    s_post, s_pre : array_like
        T1-weighted signal after and before the agent (same units, same grid, same
        scanner scaling).
    min_pre : float, optional
        Voxels where ``S_pre <= min_pre`` (or either signal is non-finite) give **NaN**:
        a non-positive or near-zero pre-contrast signal (background, air, masked-out
        voxels) makes the ratio meaningless. The default 0.0 only rejects non-positive
        signals; pass a noise-floor level (e.g. a few times the background SD) to also
        reject noise-dominated voxels.

    Returns
    -------
    numpy.ndarray of float64
        SE in percent. Negative values are kept.
    """
    post = np.asarray(s_post, dtype=np.float64)
    pre = np.asarray(s_pre, dtype=np.float64)
    # S_post must be finite too, as documented (an infinite S_post gave an infinite SE and
    # inf - inf warnings); the placeholders keep the arithmetic warning-free.
    ok = np.isfinite(pre) & np.isfinite(post) & (pre > float(min_pre))
    safe_pre = np.where(ok, pre, 1.0)
    safe_post = np.where(ok, post, 1.0)
    return np.where(ok, 100.0 * (safe_post - safe_pre) / safe_pre, np.nan)


def dose_normalised(
    value: ArrayLike,
    dose_mg_per_kg: ArrayLike | None,
    reference_dose_mg_per_kg: float = DEFAULT_REFERENCE_DOSE_MG_PER_KG,
) -> np.ndarray:
    """Normalise an uptake value to a reference dose: ``value · reference / dose``.

    Assumes uptake proportional to dose (as in NanoRad, seeds-facts §1.7).

    Parameters
    ----------
    value : array_like
        Any uptake quantity (SE %, concentration, ...).
    dose_mg_per_kg : array_like or None
        Administered dose in mg/kg. ``0``, ``None``, NaN or +inf (placebo / unknown) give
        NaN.
    reference_dose_mg_per_kg : float, optional
        Reference dose in mg/kg (default 100).

    Returns
    -------
    numpy.ndarray of float64
        The value scaled by ``reference / dose`` (15 mg/kg → ×6.667 at the default).

    Raises
    ------
    ValueError
        If the dose is negative or the reference dose is not positive.
    """
    reference = _positive_scalar(reference_dose_mg_per_kg, "reference_dose_mg_per_kg")
    dose = _dose_or_nan(dose_mg_per_kg)
    return np.asarray(value, dtype=np.float64) * (reference / dose)


def uptake_maps(
    r1_pre_per_s: ArrayLike,
    r1_post_per_s: ArrayLike,
    valid_pre: ArrayLike,
    valid_post: ArrayLike,
    *,
    r1_per_mM_per_s: float,
    particle_molar_mass_g_per_mol: float,
    gd_per_particle: float,
) -> dict[str, np.ndarray]:
    """ΔR1, Gd and mass concentration and both T1 maps on one (reference) grid.

    A voxel is valid when both fits were valid there after resampling (validity above
    :data:`RESAMPLED_VALID_THRESHOLD`: a lower value means the interpolation borrowed from
    invalid neighbours) and both R1 are positive; every map is NaN elsewhere. Negative
    concentrations are kept.

    Parameters
    ----------
    r1_pre_per_s, r1_post_per_s : array_like
        Baseline and post-agent R1, 1/s.
    valid_pre, valid_post : array_like
        Fit validity resampled onto the same grid (0..1).
    r1_per_mM_per_s : float
        Relaxivity per Gd ion, 1/(mM s).
    particle_molar_mass_g_per_mol : float
        Agent molar mass, g/mol.
    gd_per_particle : float
        Gd ions per particle or molecule.

    Returns
    -------
    dict of ndarray (float64)
        ``delta_r1`` (1/s), ``gd_conc`` (mM Gd), ``mass_conc`` (mg/L), ``t1_pre`` and
        ``t1_post`` (s, = 1/R1).
    """
    pre = np.asarray(r1_pre_per_s, dtype=np.float64)
    post = np.asarray(r1_post_per_s, dtype=np.float64)
    valid = ((np.asarray(valid_post) > RESAMPLED_VALID_THRESHOLD)
             & (np.asarray(valid_pre) > RESAMPLED_VALID_THRESHOLD)
             & (pre > 0) & (post > 0))
    dr1 = np.where(valid, delta_r1(post, pre), np.nan)
    gd = gd_concentration_mM(dr1, r1_per_mM_per_s)
    mass = mass_concentration_mg_per_L(gd, particle_molar_mass_g_per_mol, gd_per_particle)
    with np.errstate(divide="ignore"):
        t1_pre = np.where(valid, 1.0 / pre, np.nan)
        t1_post = np.where(valid, 1.0 / post, np.nan)
    return {"delta_r1": dr1, "gd_conc": gd, "mass_conc": mass, "t1_pre": t1_pre,
            "t1_post": t1_post}


def masked_signal_enhancement(s_post: ArrayLike, s_pre: ArrayLike) -> np.ndarray:
    """SE % (:func:`signal_enhancement_percent`) inside the signal mask of ``s_pre``, NaN
    outside (background and air have no meaningful ratio).

    Parameters
    ----------
    s_post, s_pre : array_like
        T1-weighted signal after and before the agent on one grid.
    """
    from .masks import signal_mask

    pre = np.asarray(s_pre, dtype=np.float64)
    post = np.asarray(s_post, dtype=np.float64)
    return np.where(signal_mask(pre), signal_enhancement_percent(post, pre), np.nan)
