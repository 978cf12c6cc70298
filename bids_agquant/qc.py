"""Quality-control numbers a reviewer needs to trust a result: registration quality and the
thresholds of the report's warnings.

Pure numpy: arrays in, numbers out. The Nipype adapter is
:class:`bids_agquant.interfaces.reports.RegistrationQuality`; the HTML report reads the values
back from the sidecar of the registered T1w (``RegistrationQuality``).
"""

from __future__ import annotations

import numpy as np

#: Histogram bins of the joint intensity histogram behind the normalised mutual information.
NMI_BINS = 64

#: Correlation (baseline T1w vs registered session T1w, head without lesions) below which the
#: report warns of a poor registration. On the 2 mm reference dataset (SNR 100, true motion of
#: a few mm and degrees) every registered session reaches r = 0.985-0.988 (0.37-0.56 before
#: registration), and moving a registered image by half a voxel (1 mm) lowers r to 0.946, by
#: one voxel to 0.85, a 2 degree rotation to 0.92 (tests/e2e/test_reports.py re-measures this).
#: 0.95 therefore flags a residual error of about half a voxel or more. Noise lowers r for
#: every session alike (the ceiling is set by the SNR), so a warning calls for a look at the
#: checkerboard, not for automatic rejection.
POOR_REGISTRATION_CORRELATION = 0.95

#: Fraction of negative-concentration voxels in a lesion above which the report warns. Noise
#: alone gives 0.5 where the true uptake is zero (placebo, washed-out D8), so above 0.25 at
#: least a quarter of the lesion shows less R1 than at baseline: no measurable uptake, or
#: misregistration, and the lesion mean must not be read as a concentration.
HIGH_NEGATIVE_FRACTION = 0.25


def registration_quality(fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray,
                         bins: int = NMI_BINS) -> dict:
    """Similarity of a registered image to its reference inside a mask.

    Parameters
    ----------
    fixed : numpy.ndarray
        Reference image (baseline T1w), any intensity units.
    moving : numpy.ndarray
        The other session's T1w resampled onto the reference grid, same shape.
    mask : numpy.ndarray of bool
        Voxels compared (head signal with the lesions and a margin cut out: lesions change
        between sessions, that is the measured signal).
    bins : int
        Bins per axis of the joint histogram (intensities between the 0.5th and 99.5th
        percentiles of each image in the mask).

    Returns
    -------
    dict
        ``correlation`` (Pearson r, 1 = identical up to a linear intensity change),
        ``normalised_mutual_information`` ((H(A) + H(B)) / H(A, B), from 1 for independent
        images to 2 for one-to-one intensities, Studholme 1999), ``n_voxels``. Values are NaN
        when fewer than 100 finite voxels are in the mask.
    """
    fixed = np.asarray(fixed, dtype=np.float64)
    moving = np.asarray(moving, dtype=np.float64)
    if fixed.shape != moving.shape or np.shape(mask) != fixed.shape:
        raise ValueError(f"shapes differ: fixed {fixed.shape}, moving {moving.shape}, "
                         f"mask {np.shape(mask)}")
    keep = np.asarray(mask, bool) & np.isfinite(fixed) & np.isfinite(moving)
    a, b = fixed[keep], moving[keep]
    out = {"correlation": float("nan"), "normalised_mutual_information": float("nan"),
           "n_voxels": int(a.size)}
    if a.size < 100:
        return out
    if a.std() > 0 and b.std() > 0:
        out["correlation"] = float(np.corrcoef(a, b)[0, 1])
    edges = [np.unique(np.percentile(x, [0.5, 99.5])) for x in (a, b)]
    if all(e.size == 2 for e in edges):
        joint, _, _ = np.histogram2d(np.clip(a, *edges[0]), np.clip(b, *edges[1]), bins=bins,
                                     range=[tuple(edges[0]), tuple(edges[1])])
        p = joint / joint.sum()

        def entropy(q):
            q = q[q > 0]
            return float(-(q * np.log(q)).sum())

        joint_h = entropy(p)
        if joint_h > 0:
            out["normalised_mutual_information"] = (
                (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / joint_h)
    return out


def rigid_motion(parameters) -> dict:
    """Size of an ITK/ANTs rigid (or affine) transform: rotation angle and translation.

    Parameters
    ----------
    parameters : array-like of 12 floats
        ITK ``AffineTransform`` parameters: the 3x3 matrix row by row, then the translation
        (mm, LPS). The transform maps x to A (x - c) + c + t about its fixed centre c,
        so the centre itself moves by t.

    Returns
    -------
    dict
        ``rotation_deg``: angle of the matrix's rotation (its polar factor), degrees;
        ``translation_mm``: how far the centre of rotation moves, mm (the length of the
        translation, which does not depend on LPS vs RAS).
    """
    p = np.asarray(parameters, dtype=np.float64).ravel()
    if p.size != 12:
        raise ValueError(f"expected 12 affine parameters, got {p.size}")
    matrix = p[:9].reshape(3, 3)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return {"rotation_deg": float(np.degrees(np.arccos(cos))),
            "translation_mm": float(np.linalg.norm(p[9:12]))}
