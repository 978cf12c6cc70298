"""The rules that used to live in the Nipype adapters, tested on arrays: signal mask and lesion
exclusion, the uptake validity rule and T1 = 1/R1, the UNI-source choice, the LoQ labels,
the SE normalisation and the control-failure rule."""

from __future__ import annotations

import numpy as np
import pytest

from bids_agquant.lesions import (
    BELOW_LOQ,
    NOT_ASSESSED,
    QUANTIFIED,
    control_failed,
    labels_from_contours,
    normal_tissue_enhancement,
    quantification_labels,
)
from bids_agquant.qmri.masks import (
    exclude_dilated_labels,
    fit_mask,
    margin_iterations,
    signal_mask,
)
from bids_agquant.qmri.mp2rage import choose_uni_source
from bids_agquant.qmri.uptake import masked_signal_enhancement, uptake_maps


def _ball(shape=(24, 24, 24), radius=8.0):
    grid = np.indices(shape) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    return np.sqrt((grid ** 2).sum(axis=0)) <= radius


def test_signal_mask_keeps_the_head_and_drops_noise_specks():
    head = _ball()
    image = np.where(head, 100.0, 0.0)
    image[0, 0, 0] = 90.0  # an isolated bright voxel outside the head
    mask = signal_mask(image)
    # the opening smooths single-voxel corners of the digital ball's surface, nothing more
    assert mask[_ball(radius=7.0)].all() and not mask[~head].any()
    assert mask.sum() > 0.97 * head.sum()
    assert not mask[0, 0, 0]
    assert not signal_mask(np.zeros((4, 4, 4))).any()


def test_fit_mask_needs_signal_and_a_positive_b1():
    signal = np.where(_ball(), 100.0, 0.0)
    b1 = np.full(signal.shape, 0.9)
    b1[12] = 0.0  # a slab the B1+ map does not cover
    np.testing.assert_array_equal(fit_mask(signal), signal_mask(signal))
    mask = fit_mask(signal, b1)
    assert not mask[12].any() and mask[11].sum() == signal_mask(signal)[11].sum()


def test_lesions_and_their_margin_are_cut_out():
    mask = np.ones((9, 9, 9), bool)
    labels = np.zeros((9, 9, 9), np.int16)
    labels[4, 4, 4] = 3
    cut = exclude_dilated_labels(mask, labels, margin_iterations(4.0, 2.0))
    assert margin_iterations(4.0, 2.0) == 2 and margin_iterations(1.0, 3.0) == 1
    assert not cut[4, 4, 4] and not cut[4, 4, 6] and cut[4, 4, 7]
    with pytest.raises(ValueError, match="do not match"):
        exclude_dilated_labels(mask, labels[:-1], 1)


def test_uptake_maps_validity_rule_and_t1():
    r1_pre = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    r1_post = np.array([1.89, 0.9, 1.5, 1.5, 1.5])
    valid_pre = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    valid_post = np.array([1.0, 1.0, 0.99, 1.0, 1.0])
    maps = uptake_maps(r1_pre, r1_post, valid_pre, valid_post, r1_per_mM_per_s=8.9,
                       particle_molar_mass_g_per_mol=10000.0, gd_per_particle=10.0)
    np.testing.assert_allclose(maps["gd_conc"][:2], [0.1, -0.1 / 8.9], rtol=1e-12)
    np.testing.assert_allclose(maps["mass_conc"][0], 100.0)  # 0.1 mM Gd = 100 mg/L AGuIX
    # borrowed from an invalid neighbour (0.99), and a zero R1: invalid, every map NaN
    for key in ("delta_r1", "gd_conc", "mass_conc", "t1_pre", "t1_post"):
        assert np.isnan(maps[key][2]) and np.isnan(maps[key][3]), key
    np.testing.assert_allclose(maps["t1_post"][[0, 4]], [1 / 1.89, 1 / 1.5])
    assert maps["delta_r1"][1] < 0  # negatives kept


def test_uni_source_preference():
    assert choose_uni_source(has_magnitudes=True, has_phases=True, has_unit1=True) == "complex"
    assert choose_uni_source(has_magnitudes=True, has_phases=False, has_unit1=True) == "unit1"
    assert choose_uni_source(has_magnitudes=False, has_phases=False, has_unit1=True) == "unit1"
    assert choose_uni_source(has_magnitudes=True, has_phases=False,
                             has_unit1=False) == "magnitude"
    with pytest.raises(ValueError):
        choose_uni_source(has_magnitudes=False, has_phases=True, has_unit1=False)


def test_quantification_labels():
    labels = quantification_labels(np.array([0.05, -0.02, 0.5, 0.1]),
                                   np.array([0.1, 0.1, 0.1, np.nan]))
    assert list(labels) == [BELOW_LOQ, BELOW_LOQ, QUANTIFIED, NOT_ASSESSED]


def test_normal_tissue_enhancement_and_control_failure():
    se = np.array([[5.0, 7.0, np.nan], [100.0, 6.0, 1.0]])
    normal = np.array([[True, True, True], [False, True, False]])
    assert normal_tissue_enhancement(se, normal) == 6.0
    assert np.isnan(normal_tissue_enhancement(se, np.zeros_like(normal)))
    failed = control_failed(np.array([0.01, 0.2, 0.01]), np.array([0.1, 0.1, 0.1]),
                            np.array([2.0, 0.0, -12.0]), 10.0)
    assert list(failed) == [False, True, True]
    assert list(control_failed(np.array([0.01]), np.array([0.1]))) == [False]


def test_labels_from_contours():
    mask = np.zeros((6, 6, 6))
    mask[1, 1, 1] = mask[4, 4, 4] = 1
    labels = labels_from_contours(mask, "mask")
    assert labels.dtype == np.int16 and sorted(np.unique(labels)) == [0, 1, 2]
    with pytest.raises(ValueError, match="integers"):
        labels_from_contours(mask * 2.4, "dseg")
    with pytest.raises(ValueError, match="3-D"):
        labels_from_contours(mask[..., None], "dseg")


def test_masked_signal_enhancement_is_nan_outside_the_head():
    pre = np.where(_ball(), 100.0, 0.0)
    se = masked_signal_enhancement(pre * 1.2, pre)
    np.testing.assert_allclose(se[_ball(radius=7.0)], 20.0)
    inside = np.isfinite(se)
    assert not inside[~_ball()].any() and np.isnan(se[0, 0, 0])
