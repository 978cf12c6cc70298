"""Signal masks: which voxels hold tissue, and which are normal tissue around lesions.

Pure functions on arrays. The signal mask is used as the fit mask of the T1 maps, the metric
mask of the registrations, the region of the signal-enhancement map and the normal-tissue
region of the lesion statistics.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["exclude_dilated_labels", "fit_mask", "margin_iterations", "signal_mask"]


#: Closing steps of :func:`signal_mask` (bridges thin gaps such as sulci and vessels).
_CLOSING_ITERATIONS = 2


def signal_mask(image: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Head/brain mask from signal: above ``fraction`` of the robust maximum, holes filled.

    Parameters
    ----------
    image : ndarray
        Magnitude image (any units).
    fraction : float
        Threshold relative to the 99.5th percentile of the positive voxels.

    Returns
    -------
    ndarray of bool
        The largest connected component of the thresholded image, opened once (isolated
        noise voxels), closed twice and with its holes filled.

    Notes
    -----
    Beyond the field of view nothing is known, not "no signal": the morphology runs on the
    mask padded by replicating its edge, so a slab or a head touching the first or last
    slice keeps its edge voxels (scipy's erosion would treat the outside as background and
    strip two voxels from every face).
    """
    finite = np.isfinite(image)
    positive = image[finite & (image > 0)]
    if positive.size == 0:
        return np.zeros(image.shape, bool)
    mask = finite & (image > fraction * np.percentile(positive, 99.5))
    pad = _CLOSING_ITERATIONS
    mask = np.pad(mask, pad, mode="edge")
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n > 1:  # keep the largest connected component (drops isolated noise voxels)
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_closing(mask, iterations=_CLOSING_ITERATIONS)
    mask = mask[(slice(pad, -pad),) * mask.ndim]
    return ndimage.binary_fill_holes(mask)


def fit_mask(signal: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
    """Voxels a VFA T1 fit is attempted in: the signal mask of ``signal`` (e.g. the mean
    over flip angles) and, with a B1+ map on the same grid, a positive B1 (a zero or negative
    B1 has no flip angle to correct with)."""
    mask = signal_mask(signal)
    if b1 is not None:
        mask &= b1 > 0
    return mask


def margin_iterations(margin_mm: float, voxel_size_mm: float) -> int:
    """Dilation steps (at least 1) covering ``margin_mm`` at the finest voxel size."""
    return max(1, round(margin_mm / voxel_size_mm))


def exclude_dilated_labels(mask: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """``mask`` without the labelled voxels dilated by ``iterations`` steps.

    Lesions change between sessions (that is the signal measured), and their edge is
    partial volume: neither may drive a registration or count as normal tissue.

    Parameters
    ----------
    mask : ndarray of bool
        Region to cut from.
    labels : ndarray
        Label map on the same grid; every non-zero voxel is excluded.
    iterations : int
        Dilation steps of the excluded region (6-connected).
    """
    if labels.shape != mask.shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the mask {mask.shape}")
    return mask & ~ndimage.binary_dilation(labels > 0, iterations=iterations)
