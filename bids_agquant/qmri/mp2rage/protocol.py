"""MP2RAGE sequence protocol: :class:`MP2RAGEProtocol`, its validation and BIDS keys.

The timing convention it describes is set out in the docstring of
:mod:`bids_agquant.qmri.mp2rage`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Inversion efficiency of the Siemens adiabatic inversion pulse (Marques et al. 2010).
DEFAULT_INVERSION_EFFICIENCY = 0.96

#: Slack (s) allowed in the timing-feasibility checks, for rounding in sidecar values.
_TIMING_TOLERANCE_S = 1e-9


class MP2RAGETimingError(ValueError):
    """An MP2RAGE protocol is invalid or its timing is infeasible.

    Raised by :class:`MP2RAGEProtocol` for every parameter problem (non-positive times, flip
    angles outside (0, 180) degrees, inversion efficiency outside (0, 1], non-integer shot
    counts) and for readout trains that do not fit in the inversion cycle. The message names
    the violated condition and the offending values.
    """


def _as_positive_time(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise MP2RAGETimingError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise MP2RAGETimingError(f"{name} must be a positive, finite number of seconds, got {out}")
    return out


def _as_pair(name: str, value: Any) -> tuple[float, float]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MP2RAGETimingError(f"{name} must be two numbers, got {value!r}") from None
    if arr.shape != (2,):
        raise MP2RAGETimingError(f"{name} must hold exactly two values, got {value!r}")
    return float(arr[0]), float(arr[1])


def _as_shot_count(name: str, value: Any) -> int:
    if isinstance(value, bool | np.bool_):
        raise MP2RAGETimingError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise MP2RAGETimingError(f"{name} must be an integer >= 1, got {value!r}") from None
        if not math.isfinite(as_float) or as_float != round(as_float):
            raise MP2RAGETimingError(f"{name} must be an integer >= 1, got {value!r}")
        out = int(round(as_float))
    if out < 1:
        raise MP2RAGETimingError(f"{name} must be an integer >= 1, got {out}")
    return out


def _split_echo_spacing(value: Any) -> tuple[Any, Any]:
    """``RepetitionTimeExcitation`` as (INV1 / common, INV2 or None): a number, or one or two
    values (one per inversion; a one-element list is a number)."""
    if isinstance(value, str | bytes):
        raise MP2RAGETimingError(
            f"RepetitionTimeExcitation must be a number or [INV1, INV2] in s, got {value!r}")
    if np.ndim(value) == 0:
        return value, None
    values = list(np.asarray(value, dtype=object).reshape(-1))
    if np.ndim(value) != 1 or len(values) not in (1, 2):
        raise MP2RAGETimingError(
            f"RepetitionTimeExcitation must be a number or [INV1, INV2] in s, got {value!r}")
    return values[0], values[1] if len(values) == 2 else None


@dataclass(frozen=True)
class MP2RAGEProtocol:
    """MP2RAGE acquisition parameters (BIDS names in brackets).

    Parameters
    ----------
    repetition_time_preparation_s : float
        Time between two inversions, s [``RepetitionTimePreparation``].
    repetition_time_excitation_s : float
        Echo spacing of the readout trains (time between two excitations), s
        [``RepetitionTimeExcitation``].
    inversion_times_s : tuple of 2 float
        Times from the inversion to the k-space-centre excitation of each train, s
        [``InversionTime``].
    flip_angles_deg : tuple of 2 float
        Nominal readout flip angles, degrees, each in (0, 180) [``FlipAngle``].
    shots_before, shots_after : int
        Excitations per train before the k-space centre and from the centre on (the centre
        excitation is the first "after" one) [``NumberShots`` = ``[before, after]``]. Use
        :meth:`from_number_shots` to split a total.
    inversion_efficiency : float, optional
        ``Mz -> -eff * Mz`` at the inversion, in (0, 1]; default 0.96. Not scaled by B1.
    repetition_time_excitation_inv2_s : float, optional
        Echo spacing of the second (INV2) train when it differs from the first's, s
        (MP2RAGE-ME: a multi-echo INV2 readout, e.g. 32 ms against 6.2 ms). ``None``: the
        same as ``repetition_time_excitation_s``.

    Raises
    ------
    MP2RAGETimingError
        If a value has the wrong type or range, or the timing is infeasible: the first train
        must start after the inversion (``TI1 - shots_before * tau1 >= 0``), the trains must
        not overlap (``TI2 - shots_before * tau2 >= TI1 + shots_after * tau1``) and the second
        train must end before the next inversion (``TI2 + shots_after * tau2 <= TR_prep``).

    Notes
    -----
    Instances are immutable and hashable (the lookup tables are cached per protocol). Values
    are coerced on construction: times and angles to ``float``, shot counts to ``int`` (a
    float is accepted only if it is integral), pairs to tuples. An INV2 echo spacing equal to
    ``repetition_time_excitation_s`` is stored as ``None``, so both spellings of one protocol
    compare and hash equal and share their cached tables (which are those of the
    single-spacing model, bit for bit).
    """

    repetition_time_preparation_s: float
    repetition_time_excitation_s: float
    inversion_times_s: tuple[float, float]
    flip_angles_deg: tuple[float, float]
    shots_before: int
    shots_after: int
    inversion_efficiency: float = DEFAULT_INVERSION_EFFICIENCY
    repetition_time_excitation_inv2_s: float | None = None

    @property
    def repetition_times_excitation_s(self) -> tuple[float, float]:
        """Echo spacing of the INV1 and INV2 trains, s."""
        tau2 = self.repetition_time_excitation_inv2_s
        return (self.repetition_time_excitation_s,
                self.repetition_time_excitation_s if tau2 is None else tau2)

    def __post_init__(self) -> None:
        tr = _as_positive_time("RepetitionTimePreparation", self.repetition_time_preparation_s)
        tau = _as_positive_time("RepetitionTimeExcitation", self.repetition_time_excitation_s)
        tau2 = tau
        if self.repetition_time_excitation_inv2_s is not None:
            tau2 = _as_positive_time("RepetitionTimeExcitation[1] (INV2)",
                                     self.repetition_time_excitation_inv2_s)
            object.__setattr__(self, "repetition_time_excitation_inv2_s",
                               None if tau2 == tau else tau2)
        ti = _as_pair("InversionTime", self.inversion_times_s)
        ti = (
            _as_positive_time("InversionTime[0]", ti[0]),
            _as_positive_time("InversionTime[1]", ti[1]),
        )
        flips = _as_pair("FlipAngle", self.flip_angles_deg)
        for k, flip in enumerate(flips):
            if not (math.isfinite(flip) and 0.0 < flip < 180.0):
                raise MP2RAGETimingError(
                    f"FlipAngle[{k}] must be in (0, 180) degrees, got {flip} (flip angles: {flips})"
                )
        n_before = _as_shot_count("shots_before (NumberShots[0])", self.shots_before)
        n_after = _as_shot_count("shots_after (NumberShots[1])", self.shots_after)
        try:
            eff = float(self.inversion_efficiency)
        except (TypeError, ValueError):
            raise MP2RAGETimingError(
                f"InversionEfficiency must be a number in (0, 1], got {self.inversion_efficiency!r}"
            ) from None
        if not (math.isfinite(eff) and 0.0 < eff <= 1.0):
            raise MP2RAGETimingError(f"InversionEfficiency must be in (0, 1], got {eff}")

        object.__setattr__(self, "repetition_time_preparation_s", tr)
        object.__setattr__(self, "repetition_time_excitation_s", tau)
        object.__setattr__(self, "inversion_times_s", ti)
        object.__setattr__(self, "flip_angles_deg", flips)
        object.__setattr__(self, "shots_before", n_before)
        object.__setattr__(self, "shots_after", n_after)
        object.__setattr__(self, "inversion_efficiency", eff)

        tol = _TIMING_TOLERANCE_S
        start1 = ti[0] - n_before * tau
        if start1 < -tol:
            raise MP2RAGETimingError(
                "infeasible MP2RAGE timing: the first readout train would start before the "
                f"inversion: TI1 - shots_before * tau1 = {ti[0]:g} - {n_before} * {tau:g} = "
                f"{start1:.6g} s < 0 (InversionTime[0] too short for NumberShots[0] and "
                "RepetitionTimeExcitation)"
            )
        end1 = ti[0] + n_after * tau
        start2 = ti[1] - n_before * tau2
        if start2 < end1 - tol:
            raise MP2RAGETimingError(
                "infeasible MP2RAGE timing: the two readout trains overlap: "
                f"TI2 - shots_before * tau2 = {ti[1]:g} - {n_before} * {tau2:g} = "
                f"{start2:.6g} s < TI1 + shots_after * tau1 = {ti[0]:g} + {n_after} * "
                f"{tau:g} = {end1:.6g} s (check InversionTime, NumberShots and "
                "RepetitionTimeExcitation of each inversion)"
            )
        end2 = ti[1] + n_after * tau2
        if end2 > tr + tol:
            raise MP2RAGETimingError(
                "infeasible MP2RAGE timing: the second readout train ends after the next "
                f"inversion: TI2 + shots_after * tau2 = {ti[1]:g} + {n_after} * {tau2:g} = "
                f"{end2:.6g} s > RepetitionTimePreparation = {tr:g} s (check InversionTime[1], "
                "NumberShots and the INV2 RepetitionTimeExcitation)"
            )

    @classmethod
    def from_number_shots(cls, number_shots: Any, **kwargs: Any) -> MP2RAGEProtocol:
        """Build a protocol from a BIDS ``NumberShots`` value.

        Parameters
        ----------
        number_shots : int, float or sequence of 2 numbers
            A number is the **total** number of excitations per train, split as
            ``before = N // 2``, ``after = N - before``. A pair is ``[before, after]`` and is
            taken literally, also when both values are equal (``[88, 88]`` is 176 shots, not
            88). A one-element sequence is treated as a number.
        **kwargs
            The other constructor arguments (``repetition_time_preparation_s``, ...).

        Returns
        -------
        MP2RAGEProtocol

        Raises
        ------
        MP2RAGETimingError
            If ``number_shots`` is not a number or a pair of integers >= 1, or the resulting
            protocol is invalid.
        TypeError
            If ``shots_before`` / ``shots_after`` are also given in ``kwargs``.
        """
        if "shots_before" in kwargs or "shots_after" in kwargs:
            raise TypeError("give either number_shots or shots_before/shots_after, not both")
        if isinstance(number_shots, str | bytes):
            raise MP2RAGETimingError(
                f"NumberShots must be a number or [before, after], got {number_shots!r}"
            )
        try:
            arr = np.asarray(number_shots, dtype=np.float64)
        except (TypeError, ValueError):
            raise MP2RAGETimingError(
                f"NumberShots must be a number or [before, after], got {number_shots!r}"
            ) from None
        if arr.ndim == 0 or arr.shape == (1,):
            total = _as_shot_count("NumberShots", arr.reshape(-1)[0])
            before, after = total // 2, total - total // 2
        elif arr.shape == (2,):
            before, after = arr[0], arr[1]
        else:
            raise MP2RAGETimingError(
                f"NumberShots must be a number or [before, after], got {number_shots!r}"
            )
        return cls(shots_before=before, shots_after=after, **kwargs)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> MP2RAGEProtocol:
        """Build a protocol from BIDS-style keys (the inverse of :meth:`as_metadata`).

        ``RepetitionTimePreparation``, ``RepetitionTimeExcitation`` (a number, or a pair
        ``[tau_INV1, tau_INV2]`` when the trains differ, as in MP2RAGE-ME), ``InversionTime``
        (two values), ``FlipAngle`` (two values) and ``NumberShots`` are required;
        ``InversionEfficiency`` is optional (default 0.96). Values must already be in SI
        units (s, degrees).

        Raises
        ------
        KeyError
            If a required key is missing.
        MP2RAGETimingError
            If a value is invalid (see the class).
        """
        eff = metadata.get("InversionEfficiency", DEFAULT_INVERSION_EFFICIENCY)
        tau1, tau2 = _split_echo_spacing(metadata["RepetitionTimeExcitation"])
        return cls.from_number_shots(
            metadata["NumberShots"],
            repetition_time_preparation_s=metadata["RepetitionTimePreparation"],
            repetition_time_excitation_s=tau1,
            repetition_time_excitation_inv2_s=tau2,
            inversion_times_s=metadata["InversionTime"],
            flip_angles_deg=metadata["FlipAngle"],
            inversion_efficiency=eff,
        )

    def as_metadata(self) -> dict[str, Any]:
        """Return the protocol as BIDS-style sidecar keys (SI units, ``NumberShots`` as a pair).

        Returns
        -------
        dict
            ``RepetitionTimePreparation``, ``RepetitionTimeExcitation`` (a number when both
            trains share it, else ``[tau_INV1, tau_INV2]``), ``InversionTime``
            ``[TI1, TI2]``, ``FlipAngle`` ``[alpha1, alpha2]``, ``NumberShots``
            ``[before, after]`` and ``InversionEfficiency``.
        """
        return {
            "RepetitionTimePreparation": self.repetition_time_preparation_s,
            "RepetitionTimeExcitation": (
                self.repetition_time_excitation_s
                if self.repetition_time_excitation_inv2_s is None
                else list(self.repetition_times_excitation_s)),
            "InversionTime": list(self.inversion_times_s),
            "FlipAngle": list(self.flip_angles_deg),
            "NumberShots": [self.shots_before, self.shots_after],
            "InversionEfficiency": self.inversion_efficiency,
        }
