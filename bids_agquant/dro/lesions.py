"""Lesions of the DRO: placement in the brain, ellipsoid shape with an erf edge, concentration
patterns and their time course, and the GTV's longest diameter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from scipy.special import erfc

from .anatomy import _Anatomy
from .constants import (
    BASELINE_SESSION,
    CANDIDATE_SITES_MM,
    D8_FACTOR_RANGE,
    EDGE_WIDTH_MM,
    GD_MEAN_BASE_MM,
    GD_MEAN_RANGE_MM,
    GD_MEAN_SPAN_MM,
    LARGE_AXIS_RATIO_RANGE,
    LARGE_DIAMETER_RANGE_MM,
    LESION_GAP_MM,
    LESION_T1_RANGE_S,
    PATTERNS,
    SMALL_AXIS_RATIO_RANGE,
    SMALL_DIAMETER_RANGE_MM,
)


@dataclass(frozen=True)
class _Lesion:
    """One ellipsoidal lesion in object space, with its baseline T1 and D1 / D8 uptake."""

    label: int
    pattern: str
    center_mm: np.ndarray  # object mm
    rotation: np.ndarray  # 3x3, columns = ellipsoid axes in object space
    semi_axes_mm: np.ndarray
    t1_s: float
    gd_target_mM: float  # D1 mean over GTV (0 for placebo)
    d8_factor: float

    @property
    def r_eq_mm(self) -> float:
        return float(np.prod(self.semi_axes_mm) ** (1.0 / 3.0))

    @property
    def max_semi_mm(self) -> float:
        return float(np.max(self.semi_axes_mm))


def _edt_at(anat: _Anatomy, point_mm) -> float:
    ijk = np.linalg.solve(anat.edt_affine, np.append(point_mm, 1.0))[:3]
    return float(
        ndi.map_coordinates(anat.edt_mm, ijk[:, None], order=1, mode="constant", cval=0.0)[0]
    )


def _tissue_at(anat: _Anatomy, point_mm) -> float:
    ijk = np.linalg.solve(anat.affine, np.append(point_mm, 1.0))[:3]
    gm = ndi.map_coordinates(anat.gm, ijk[:, None], order=1)[0]
    wm = ndi.map_coordinates(anat.wm, ijk[:, None], order=1)[0]
    return float(gm + wm)


def _site_ok(anat, centre, max_semi, placed) -> bool:
    if _edt_at(anat, centre) < max_semi + 4.0 * EDGE_WIDTH_MM + 2.0:
        return False
    if _tissue_at(anat, centre) < 0.5:
        return False
    for other_c, other_semi in placed:
        if np.linalg.norm(centre - other_c) < max_semi + other_semi + LESION_GAP_MM:
            return False
    return True


def _place_lesions(rng: np.random.Generator, anat: _Anatomy, pd_is_placebo: bool,
                   dose: float) -> list[_Lesion]:
    """Three lesions: one non-measurable, two >= 17 mm, one per concentration pattern."""
    diameters = [
        float(rng.uniform(*LARGE_DIAMETER_RANGE_MM)),
        float(rng.uniform(*LARGE_DIAMETER_RANGE_MM)),
        float(rng.uniform(*SMALL_DIAMETER_RANGE_MM)),
    ]
    order = np.argsort(diameters)[::-1]  # place the largest first
    patterns = [PATTERNS[i] for i in rng.permutation(len(PATTERNS))]
    labels = (rng.permutation(3) + 1).tolist()
    sites = np.asarray(CANDIDATE_SITES_MM, dtype=np.float64)
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[_Lesion] = []
    for rank, idx in enumerate(order):
        diam = diameters[idx]
        r_eq = diam / 2.0
        small = diam < 10.0
        lo, hi = SMALL_AXIS_RATIO_RANGE if small else LARGE_AXIS_RATIO_RANGE
        ratios = rng.uniform(lo, hi, size=3)
        semi = r_eq * ratios / np.prod(ratios) ** (1.0 / 3.0)
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rot = q * np.sign(np.diag(r))
        if np.linalg.det(rot) < 0:
            rot[:, 0] = -rot[:, 0]
        max_semi = float(semi.max())
        centre = None
        for site_idx in rng.permutation(len(sites)):
            jitter = rng.uniform(-3.0, 3.0, size=3)
            for cand in (sites[site_idx] + jitter, sites[site_idx]):
                if _site_ok(anat, cand, max_semi, placed):
                    centre = cand
                    break
            if centre is not None:
                break
        if centre is None:  # fall back to any deep-enough brain point
            need = max_semi + 4.0 * EDGE_WIDTH_MM + 2.0
            cand_ijk = np.argwhere(anat.edt_mm >= need)
            cand_mm = cand_ijk @ anat.edt_affine[:3, :3].T + anat.edt_affine[:3, 3]
            for c_idx in rng.permutation(len(cand_mm)):
                if _site_ok(anat, cand_mm[c_idx], max_semi, placed):
                    centre = cand_mm[c_idx]
                    break
        if centre is None:
            raise RuntimeError("could not place a lesion inside the brain; this is a bug")
        placed.append((np.asarray(centre, dtype=np.float64), max_semi))
        t1 = float(rng.uniform(*LESION_T1_RANGE_S))
        u = float(rng.uniform(0.6, 1.0))
        target = GD_MEAN_BASE_MM + GD_MEAN_SPAN_MM * (dose / 100.0) * u
        target = float(np.clip(target, *GD_MEAN_RANGE_MM))
        d8 = float(rng.uniform(*D8_FACTOR_RANGE))
        lesions.append(
            _Lesion(
                label=int(labels[rank]),
                pattern=patterns[rank],
                center_mm=np.round(np.asarray(centre, dtype=np.float64), 3),
                rotation=rot,
                semi_axes_mm=semi,
                t1_s=t1,
                gd_target_mM=0.0 if pd_is_placebo else target,
                d8_factor=d8,
            )
        )
    return sorted(lesions, key=lambda les: les.label)


def _concentration_factor(key: str, lesion: _Lesion) -> float:
    """Concentration at timepoint ``key`` relative to D1 (2 h after the agent)."""
    if key == BASELINE_SESSION:
        return 0.0
    if key == "D8":
        return lesion.d8_factor
    return 1.0  # D1, and the same-session post-agent timepoint (also 2 h)


def _pattern(pattern: str, rho: np.ndarray) -> np.ndarray:
    r = np.minimum(rho, 1.0)
    if pattern == "homogeneous":
        return np.ones_like(r)
    if pattern == "rim":
        return 0.25 + 0.75 * r * r
    if pattern == "central_max":
        return 1.0 - 0.75 * r * r
    raise ValueError(f"unknown concentration pattern {pattern!r}")


def _lesion_boxes(lesions, shape, affine, pose):
    """Per lesion: (slices, rho, f_L, unit-concentration field) in a bounding box.

    Evaluated analytically at ``x = pose^-1 @ affine @ ijk`` for the voxels of a box that
    contains the lesion plus 6 edge widths.
    """
    vox_to_obj = np.linalg.inv(pose) @ affine
    scan_to_vox = np.linalg.inv(affine)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = []
    for les in lesions:
        c_vox = (scan_to_vox @ pose @ np.append(les.center_mm, 1.0))[:3]
        reach = les.max_semi_mm + 6.0 * EDGE_WIDTH_MM
        lo = np.maximum(np.floor(c_vox - reach / voxel).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(c_vox + reach / voxel).astype(int) + 2, np.asarray(shape))
        if np.any(hi <= lo):
            continue
        slices = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        i = np.arange(lo[0], hi[0], dtype=np.float64)[:, None, None]
        j = np.arange(lo[1], hi[1], dtype=np.float64)[None, :, None]
        k = np.arange(lo[2], hi[2], dtype=np.float64)[None, None, :]
        d = [vox_to_obj[a, 0] * i + vox_to_obj[a, 1] * j + vox_to_obj[a, 2] * k
             + vox_to_obj[a, 3] - les.center_mm[a] for a in range(3)]
        rho2 = 0.0
        for b in range(3):  # local ellipsoid axis b
            u = (les.rotation[0, b] * d[0] + les.rotation[1, b] * d[1]
                 + les.rotation[2, b] * d[2]) / les.semi_axes_mm[b]
            rho2 = rho2 + u * u
        rho = np.sqrt(rho2)
        f = 0.5 * erfc((rho - 1.0) * les.r_eq_mm / (math.sqrt(2.0) * EDGE_WIDTH_MM))
        f[f < 1e-7] = 0.0  # drop the far tail (> 5.2 edge widths outside)
        unit = f * _pattern(les.pattern, rho)
        out.append((les, slices, rho, f, unit))
    return out


def _max_feret_mm(points: np.ndarray) -> float:
    """Maximum 3-D Feret diameter (mm) of a point set (voxel centres)."""
    n = len(points)
    if n < 2:
        return 0.0
    if n > 2000:
        try:
            points = points[ConvexHull(points).vertices]
        except Exception:  # noqa: BLE001 - degenerate hull: fall back to all points
            pass
    return float(pdist(points).max())
