"""Defensive reading of JSON sidecar values (DESIGN.md §4).

Sites export sidecars with numbers as strings (``"2.5"``, ``"8 ms"``), one-element lists,
milliseconds where BIDS says seconds, and values inherited from top-level JSON files (pybids
resolves the inheritance). Every function here returns SI values or raises
:class:`~bids_agquant.errors.InputError` naming the file and the key.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from .errors import EX_DATAERR, InputError

LOGGER = logging.getLogger("bids_agquant")


def number(value, key: str, source: Path) -> float:
    """A float from a sidecar value that may be a number, a numeric string or a 1-list."""
    if isinstance(value, list | tuple) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*(ms|s|deg)?\s*", value)
        if not match:
            raise InputError(f"{source}: {key} = {value!r} is not a number", EX_DATAERR)
        parsed = float(match.group(1))
        if match.group(2) == "ms":
            LOGGER.info("%s: %s given as %r, read as milliseconds", source, key, value)
            parsed /= 1000.0
        value = parsed
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{source}: {key} = {value!r} is not a finite number", EX_DATAERR)
    return float(value)


def seconds(value, key: str, source: Path, *, max_plausible_s: float) -> float:
    """Sidecar time in seconds; values above ``max_plausible_s`` are taken as milliseconds."""
    parsed = number(value, key, source)
    if parsed > max_plausible_s:
        LOGGER.warning("%s: %s = %g looks like milliseconds; using %g s", source, key, parsed,
                       parsed / 1000.0)
        parsed /= 1000.0
    if parsed <= 0:
        raise InputError(f"{source}: {key} = {parsed!r} must be positive", EX_DATAERR)
    return parsed


def numbers(value, key: str, source: Path, count: int | None = None) -> list[float]:
    """A list of floats from a list, a JSON-ish string (``"[0.7, 2.5]"``, ``"0.7 2.5"``) or a
    scalar; ``count`` (if given) is the required length."""
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        value = [v for v in re.split(r"[,;\s]+", text) if v] if text else []
    if not isinstance(value, list | tuple):
        value = [value]
    parsed = [number(v, key, source) for v in value]
    if count is not None and len(parsed) != count:
        raise InputError(f"{source}: {key} = {value!r} should have {count} values", EX_DATAERR)
    return parsed


def required(metadata: dict, key: str, source: Path):
    """``metadata[key]``, or InputError (66) saying the key is missing."""
    if key not in metadata or metadata[key] in (None, ""):
        raise InputError(f"{source}: required sidecar key {key!r} is missing (JSON sidecar or an "
                         "inherited top-level JSON)")
    return metadata[key]


def number_shots(meta: dict, source: Path) -> tuple[tuple[int, int], str]:
    """NumberShots as (before, after) the k-space centre, and how it was read (BIDS qMRI
    appendix: a pair is taken literally; a single number is the total per readout)."""
    raw = required(meta, "NumberShots", source)
    values = numbers(raw, "NumberShots", source)
    if len(values) not in (1, 2) or any(v < 1 or v != int(v) for v in values):
        raise InputError(f"{source}: NumberShots = {raw!r} must be a positive integer or "
                         "[before, after] the k-space centre", EX_DATAERR)
    if len(values) == 2:
        before, after = int(values[0]), int(values[1])
        return (before, after), f"NumberShots [{before}, {after}] taken as [before, after]"
    total = int(values[0])
    slices = meta.get("SlicesPerSlab")
    partial = meta.get("SlicePartialFourier")
    if slices is not None and partial is not None:
        slices = number(slices, "SlicesPerSlab", source)
        partial = number(partial, "SlicePartialFourier", source)
        before, after = round(slices * (partial - 0.5)), round(slices / 2)
        if before + after == total:
            return (before, after), (f"NumberShots {total} split as [{before}, {after}] from "
                                     f"SlicesPerSlab {slices:g} and SlicePartialFourier "
                                     f"{partial:g} (BIDS qMRI appendix)")
    before = total // 2
    return (before, total - before), (f"NumberShots {total} is one number: assumed a symmetric "
                                      f"(linear, no partial Fourier) readout [{before}, "
                                      f"{total - before}]")
