"""Anatomy of the DRO: the MNI152 tissue fractions, the scanner grid and rigid head poses.

Object space is MNI152 RAS mm; a pose maps object mm to scanner mm (see the package
docstring, "Coordinate conventions").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class _Anatomy:
    """The 1 mm MNI152 tissue fractions and what lesion placement needs from them."""

    gm: np.ndarray  # float32, 1 mm
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray  # 1 mm voxel -> object mm
    centroid_mm: np.ndarray  # brain centroid (object mm)
    edt_mm: np.ndarray  # distance to outside the brain mask, 2 mm subsampled grid
    edt_affine: np.ndarray
    support_box: np.ndarray  # (2, 3) 1 mm voxel index bounds of the non-zero tissue maps


@lru_cache(maxsize=1)
def _anatomy() -> _Anatomy:
    """Load the 1 mm MNI152 tissue fractions (offline) and derived quantities."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = np.clip(np.asarray(gm_img.get_fdata(dtype=np.float32)), 0.0, 1.0)
    wm = np.clip(
        np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)),
        0.0,
        1.0,
    )
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    soft = ndi.gaussian_filter(mask.astype(np.float32), sigma=1.0)
    csf = np.clip(soft - gm - wm, 0.0, 1.0).astype(np.float32)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    ijk = np.argwhere(mask)
    centroid = affine[:3, :3] @ ijk.mean(axis=0) + affine[:3, 3]
    sub = mask[::2, ::2, ::2]
    edt = ndi.distance_transform_edt(sub, sampling=2.0).astype(np.float32)
    edt_affine = affine.copy()
    edt_affine[:3, :3] *= 2.0
    nz = np.argwhere((gm + wm + csf) > 0)
    support_box = np.stack([nz.min(axis=0) - 1, nz.max(axis=0) + 1]).astype(np.float64)
    return _Anatomy(gm, wm, csf, affine, centroid, edt, edt_affine, support_box)


@lru_cache(maxsize=2)
def _grid(resolution_mm: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Scanner grid: shape and affine of nilearn's MNI152 template at ``resolution_mm``."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution_mm)
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)


def _axis_coords(shape, matrix):
    """World coordinates ``matrix @ [i, j, k, 1]`` for every voxel, as three float32 arrays.

    Built by broadcasting (no index grid in memory).
    """
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    j = np.arange(shape[1], dtype=np.float32)[None, :, None]
    k = np.arange(shape[2], dtype=np.float32)[None, None, :]
    m = np.asarray(matrix, dtype=np.float32)
    return [m[a, 0] * i + m[a, 1] * j + m[a, 2] * k + m[a, 3] for a in range(3)]


def _sample_fractions(anat: _Anatomy, shape, affine, pose, pool=None):
    """Tissue fractions (GM, WM, CSF) at the object points of every scanner voxel.

    Trilinear interpolation of the 1 mm maps at ``x = pose^-1 @ affine @ ijk``, computed only
    in the scanner-voxel box that can receive non-zero tissue (the maps are 0 elsewhere).
    """
    vox_to_1mm = np.linalg.inv(anat.affine) @ np.linalg.inv(pose) @ affine
    # Bounding box, in scanner voxels, of the transformed support box (all 8 corners).
    lo1, hi1 = anat.support_box
    corners = np.array([[x, y, z, 1.0] for x in (lo1[0], hi1[0]) for y in (lo1[1], hi1[1])
                        for z in (lo1[2], hi1[2])])
    cvox = (np.linalg.inv(vox_to_1mm) @ corners.T)[:3]
    lo = np.clip(np.floor(cvox.min(axis=1)).astype(int) - 1, 0, np.asarray(shape))
    hi = np.clip(np.ceil(cvox.max(axis=1)).astype(int) + 2, 0, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    offset = vox_to_1mm[:3, :3] @ lo + vox_to_1mm[:3, 3]

    def one(arr):
        full = np.zeros(shape, dtype=np.float32)
        if min(box_shape) > 0:
            full[box] = ndi.affine_transform(
                arr, vox_to_1mm[:3, :3], offset=offset, output_shape=box_shape,
                output=np.float32, order=1, mode="constant", cval=0.0, prefilter=False)
        return full

    maps = (anat.gm, anat.wm, anat.csf)
    if pool is None:
        return [one(arr) for arr in maps]
    return list(pool.map(one, maps))


# --------------------------------------------------------------------------------------
# Rigid motion (head poses)
# --------------------------------------------------------------------------------------


def _rotation(axis, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a unit ``axis`` by ``angle_rad`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1.0 - math.cos(angle_rad)) * (k @ k)


def _rigid(rotation: np.ndarray, pivot_mm, translation_mm) -> np.ndarray:
    """4x4 matrix of ``x -> R (x - p) + p + t``."""
    m = np.eye(4)
    p = np.asarray(pivot_mm, dtype=np.float64)
    m[:3, :3] = rotation
    m[:3, 3] = p - rotation @ p + np.asarray(translation_mm, dtype=np.float64)
    return m


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _random_motion(rng, rot_range_deg, trans_range_mm, centre_mm, pivot_radius_mm):
    """Random rigid motion; returns the 4x4 matrix and its description."""
    axis = _unit_vector(rng)
    angle = float(rng.uniform(*rot_range_deg))
    pivot = np.asarray(centre_mm) + _unit_vector(rng) * rng.uniform(0.0, pivot_radius_mm)
    trans = _unit_vector(rng) * rng.uniform(*trans_range_mm)
    mat = _rigid(_rotation(axis, math.radians(angle)), pivot, trans)
    info = {
        "rotation_axis": axis.round(6).tolist(),
        "rotation_deg": round(angle, 6),
        "pivot_mm": pivot.round(6).tolist(),
        "translation_mm": trans.round(6).tolist(),
    }
    return mat, info
