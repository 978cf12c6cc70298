"""MP2RAGE T1 mapping: signal model, UNI image, T1 lookup (with B1+ correction) and INV1 sign.

Pure numpy functions, no file I/O. Conventions:

* times (``RepetitionTimePreparation``, ``RepetitionTimeExcitation``, ``InversionTime``) and
  T1 are in **seconds**, R1 in **1/s**, flip angles in **degrees**;
* B1+ maps are a **fraction** of nominal (``alpha_eff = b1 * alpha_nominal``; see
  :func:`bids_agquant.qmri.b1.b1_to_fraction`); B1 scales both readout flip angles but not the
  adiabatic inversion (whose efficiency is a protocol constant, default 0.96);
* the UNI image is the real-valued MP2RAGE contrast of Marques et al. (NeuroImage 2010, eq. 3),
  ``UNI = Re(conj(S1) S2) / (|S1|^2 + |S2|^2)`` in ``[-0.5, 0.5]``; the scanner ``UNIT1`` image
  stores ``4095 * (UNI + 0.5)``.

Sequence timing (the discrete convention used by :func:`mp2rage_signals`, and therefore by the
lookup tables): every ``RepetitionTimePreparation`` an instantaneous inversion at ``t = 0``
(``Mz -> -eff Mz``) is followed by two spoiled-GRE readout trains of ``shots_before +
shots_after`` excitations with flip angles ``alpha1``, ``alpha2`` and echo spacings
``tau1``, ``tau2`` (``RepetitionTimeExcitation``: one value for both trains, or one per
train as in MP2RAGE-ME, whose multi-echo INV2 train is slower). Train ``k`` starts at
``TIk - shots_before * tauk``; each excitation is instantaneous (``Mz -> Mz cos(b1 alpha_k)``)
and is followed by free relaxation over ``tauk``. After ``shots_before`` such ``[pulse,
relax]`` steps we are at ``TIk`` just before the k-space-centre pulse, where the signal is
``S_k = M0 Mz(TIk^-) sin(b1 alpha_k)`` (signed); ``shots_after`` more steps (the centre pulse
is the first of them) end the train at ``TIk + shots_after * tauk``. Free relaxation fills the
gaps; the signals are the periodic steady state. The same closed form, with a saturation in
place of the inversion, models SA2RAGE (:mod:`bids_agquant.qmri.sa2rage`).

T1 is obtained from UNI by a lookup restricted to the monotonic branch of ``UNI(T1)`` (from its
maximum to its minimum, for each B1); see :func:`fit_t1_mp2rage` for the table design.

Modules (every public name is re-exported here, import from this package):

* :mod:`.protocol`: :class:`MP2RAGEProtocol` and its validation;
* :mod:`.signals`: :func:`mp2rage_signals`, the UNI contrast, UNIT1 and phase images;
* :mod:`.lookup`: the cached lookup tables, :func:`monotonic_branch` and
  :func:`fit_t1_mp2rage`;
* :mod:`.sign`: :func:`recover_inv1_sign` for magnitude-only data.

Imports are acyclic: ``sign -> lookup -> signals -> protocol``.
"""

# The package keeps the namespace of the former single module: everything in __all__,
# plus the constants and the private helpers that tests use (re-exported by a redundant
# alias). _build_lookup is the one lru_cache of the tables, defined in .lookup only.
from .lookup import LUT_B1_STEP as LUT_B1_STEP
from .lookup import LUT_T1_SAMPLES as LUT_T1_SAMPLES
from .lookup import LUT_UNI_SAMPLES as LUT_UNI_SAMPLES
from .lookup import MP2RAGEBranch, MP2RAGEFit, fit_t1_mp2rage, monotonic_branch
from .lookup import _build_lookup as _build_lookup
from .lookup import _uni_model as _uni_model
from .protocol import DEFAULT_INVERSION_EFFICIENCY, MP2RAGEProtocol, MP2RAGETimingError
from .sign import DEFAULT_PD_R1_SLOPE_S as DEFAULT_PD_R1_SLOPE_S
from .sign import recover_inv1_sign
from .signals import DEFAULT_CHUNK_VOXELS as DEFAULT_CHUNK_VOXELS
from .signals import UNIT1_SCALE as UNIT1_SCALE
from .signals import (
    choose_uni_source,
    complex_signal,
    mp2rage_signals,
    phase_to_radians,
    uni_from_signals,
    uni_from_unit1,
)

__all__ = [
    "DEFAULT_INVERSION_EFFICIENCY",
    "choose_uni_source",
    "MP2RAGEBranch",
    "MP2RAGEFit",
    "MP2RAGEProtocol",
    "MP2RAGETimingError",
    "complex_signal",
    "fit_t1_mp2rage",
    "monotonic_branch",
    "mp2rage_signals",
    "phase_to_radians",
    "recover_inv1_sign",
    "uni_from_signals",
    "uni_from_unit1",
]
