"""Nipype interfaces run as nodes on small images (NiPreps pattern)."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest
from nipype.pipeline import engine as pe
from scipy.special import erfc

from bids_agquant.interfaces.ants import (
    ApplyTransforms,
    RigidRegistration,
    ants_transform_to_ras,
)
from bids_agquant.interfaces.bids import DerivativesSink
from bids_agquant.interfaces.lesions import PrepareContours
from bids_agquant.interfaces.qmri import FitVFA
from bids_agquant.qmri.vfa import spgr_signal


def _nifti(path, data, affine=None):
    nb.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine).to_filename(path)
    return str(path)


def test_fit_vfa_node_with_percent_b1(tmp_path):
    shape = (12, 10, 8)
    t1 = np.full(shape, 1.2)
    t1[3:9, 3:7, 2:6] = 0.5
    b1 = np.full(shape, 0.8)
    flips = [2.0, 5.0, 10.0, 15.0]
    files = [_nifti(tmp_path / f"flip{i}.nii.gz",
                    spgr_signal(1000.0, t1, fa, 0.015, b1=b1).astype(np.float32))
             for i, fa in enumerate(flips)]
    b1_file = _nifti(tmp_path / "b1.nii.gz", (100 * b1).astype(np.float32))
    node = pe.Node(FitVFA(in_files=files, flip_angles_deg=flips, repetition_time_s=0.015,
                          b1_map=b1_file, b1_units="percent"),
                   name="fit", base_dir=str(tmp_path))
    result = node.run()
    est = np.asarray(nb.load(result.outputs.t1map).dataobj)
    inner = np.zeros(shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True  # the signal mask's morphology may trim the border
    np.testing.assert_allclose(est[inner], t1[inner], rtol=5e-3)
    assert "percent" in result.outputs.b1_decision.lower()


def test_prepare_contours_labels_mask_components(tmp_path):
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    mask[10:15, 10:15, 10:15] = 1
    node = pe.Node(PrepareContours(in_file=_nifti(tmp_path / "m.nii.gz", mask), kind="mask"),
                   name="prep", base_dir=str(tmp_path))
    result = node.run()
    assert result.outputs.n_lesions == 2
    labels = np.asarray(nb.load(result.outputs.labels).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_prepare_contours_rejects_non_integer_labels(tmp_path):
    bad = _nifti(tmp_path / "bad.nii.gz", np.full((4, 4, 4), 0.5, np.float32))
    node = pe.Node(PrepareContours(in_file=bad), name="prep", base_dir=str(tmp_path))
    with pytest.raises(Exception, match="integers"):
        node.run()


def test_derivatives_sink_names_and_sidecar(tmp_path):
    src = _nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2), np.float32))
    out = tmp_path / "out"
    node = pe.Node(DerivativesSink(in_file=src, base_directory=str(out),
                                   entities={"subject": "01", "session": "D1", "space": "D0",
                                             "desc": "vfa", "suffix": "Gdconc"},
                                   metadata={"Units": "mmol/L"}),
                   name="ds", base_dir=str(tmp_path / "work"))
    result = node.run()
    expected = out / "sub-01/ses-D1/anat/sub-01_ses-D1_space-D0_desc-vfa_Gdconc.nii.gz"
    assert result.outputs.out_file == str(expected) and expected.is_file()
    sidecar = json.loads(expected.with_name(expected.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar == {"Units": "mmol/L"}
    assert not list(expected.parent.glob(".*.tmp"))  # atomic copy leaves no temporary


@pytest.fixture(scope="module")
def session_pair(dro2mm):
    anat = dro2mm.bids_dir / "sub-01"
    truth = json.loads((dro2mm.truth_dir / "transforms.json").read_text())["sub-01"]
    return (str(anat / "ses-D0/anat/sub-01_ses-D0_T1w.nii.gz"),
            str(anat / "ses-D1/anat/sub-01_ses-D1_T1w.nii.gz"),
            np.array(truth["D1"]["T1w"]))


def test_rigid_registration_recovers_motion_and_is_deterministic(session_pair, tmp_path):
    fixed, moving, truth = session_pair
    transforms = []
    for run in ("a", "b"):
        node = pe.Node(RigidRegistration(fixed_image=fixed, moving_image=moving,
                                         random_seed=42, num_threads=1),
                       name=f"reg_{run}", base_dir=str(tmp_path))
        result = node.run()
        assert str(tmp_path) in result.outputs.transform  # written inside the node directory
        transforms.append(result.outputs.transform)
    with open(transforms[0], "rb") as a, open(transforms[1], "rb") as b:
        assert a.read() == b.read(), "same seed, one thread: transforms must be bit-identical"
    fixed_img = nb.load(fixed)
    data = np.asarray(fixed_img.dataobj)
    points = nb.affines.apply_affine(fixed_img.affine, np.argwhere(data > 0.3 * data.max()))
    assert len(points) > 10000
    estimated = ants_transform_to_ras(transforms[0])
    error = np.linalg.norm(nb.affines.apply_affine(estimated, points)
                           - nb.affines.apply_affine(truth, points), axis=1)
    identity_error = np.linalg.norm(points - nb.affines.apply_affine(truth, points), axis=1)
    assert identity_error.mean() > 4.0  # the motion is real
    assert error.mean() < 0.2


def test_apply_transforms_keeps_labels(session_pair, tmp_path):
    fixed, moving, _ = session_pair
    ref = nb.load(fixed)
    labels = np.zeros(ref.shape, np.int16)
    labels[40:50, 50:60, 40:50] = 3
    labels[60:66, 50:56, 40:46] = 7
    label_file = _nifti(tmp_path / "labels.nii.gz", labels, ref.affine)
    node = pe.Node(ApplyTransforms(input_image=label_file, reference_image=moving,
                                   interpolation="genericLabel"),
                   name="apply", base_dir=str(tmp_path))
    out = np.asarray(nb.load(node.run().outputs.output_image).dataobj)
    assert out.dtype == np.int16
    assert set(np.unique(out)) == {0, 3, 7}


def test_map_resampling_keeps_small_lesion_contrast_and_masks_invalid(tmp_path):
    """Cubic B-spline resampling with a validity mask: a 7 mm 'lesion' (smooth edge) keeps its
    mean much better than with linear interpolation, a hole of invalid voxels neither rings
    into its neighbours nor leaks a value, and the background stays 0."""
    shape = (40, 40, 40)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array([20.3, 19.6, 20.1])
    rho_mm = 2.0 * np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))

    def lesion_r1(rho):  # radius 3.5 mm with a smooth (erfc, 1 mm) edge, as in the DRO
        return 0.7 + 1.3 * 0.5 * erfc((rho - 3.5) / (np.sqrt(2.0) * 1.0))

    r1 = lesion_r1(rho_mm)
    brain = rho_mm <= 30
    hole = np.zeros(shape, bool)
    hole[28:31, 20:23, 20:23] = True  # failed fits, 10 mm from the lesion
    valid = brain & ~hole
    r1_in = np.where(valid, r1, 0.0)
    # A half-voxel shift of the grid (a translation-only resampling).
    ref_affine = affine.copy()
    ref_affine[:3, 3] = [1.0, 1.0, 1.0]
    files = {name: _nifti(tmp_path / f"{name}.nii.gz", data.astype(np.float32), affine)
             for name, data in (("r1", r1_in), ("valid", valid.astype(np.uint8)))}
    ref_file = _nifti(tmp_path / "ref.nii.gz", np.zeros(shape, np.float32), ref_affine)
    out = {}
    for interp, mask in (("linear", False), ("bSpline", True)):
        node = pe.Node(ApplyTransforms(input_image=files["r1"], reference_image=ref_file,
                                       interpolation=interp, out_name=f"{interp}.nii.gz"),
                       name=f"apply_{interp}", base_dir=str(tmp_path))
        if mask:
            node.inputs.valid_mask = files["valid"]
        out[interp] = np.asarray(nb.load(node.run().outputs.output_image).dataobj)
    ref_grid = np.indices(shape, dtype=np.float64) + 0.5  # reference voxel centres, input index
    rho_ref = 2.0 * np.sqrt(sum((g - c) ** 2 for g, c in zip(ref_grid, centre, strict=True)))
    lesion = rho_ref <= 3.5
    true_mean = lesion_r1(rho_ref[lesion]).mean()
    sinc = out["bSpline"]
    assert abs(sinc[lesion].mean() / true_mean - 1) < 0.25 * abs(
        out["linear"][lesion].mean() / true_mean - 1)
    # measured: linear -11.4 %, cubic B-spline -1.9 % (a half-voxel shift on all three axes
    # of a 7 mm lesion with a 1 mm edge at 2 mm voxels: the worst case)
    assert abs(sinc[lesion].mean() / true_mean - 1) < 0.03
    near_hole = np.zeros(shape, bool)
    near_hole[26:33, 18:25, 18:25] = True
    tissue = near_hole & (sinc > 0)
    # no ringing from the hole (filled before resampling); what remains is the exponentially
    # decaying tail of the B-spline prefilter from the lesion 10 mm away (measured <= 6e-4)
    assert tissue.any() and np.allclose(sinc[tissue], 0.7, atol=1e-3)
    assert (sinc[27:30, 20:22, 20:22] == 0).all()  # the hole stays invalid
    assert (sinc[rho_ref > 31] == 0).all()  # background


@pytest.mark.parametrize("offset", [0.0, 0.2])
def test_lesion_table_loq_and_healthy_tissue_controls(tmp_path, offset):
    """A lesion whose ΔR1 is within the noise is '<LoQ'; controls fail when normal tissue
    shows a ΔR1 (offset 0.2 1/s, e.g. a calibration drift) and pass when it does not."""
    import pandas as pd

    from bids_agquant.interfaces.lesions import LesionTable

    rng = np.random.default_rng(5)
    shape = (48, 48, 48)
    grid = np.indices(shape)
    brain = ((grid - 23.5) ** 2).sum(axis=0) <= 22**2
    labels = np.zeros(shape, np.int16)
    labels[((grid - np.array([30, 24, 24])[:, None, None, None]) ** 2).sum(axis=0) <= 9] = 1
    labels[((grid - np.array([14, 24, 24])[:, None, None, None]) ** 2).sum(axis=0) <= 9] = 2
    dr1 = rng.normal(offset, 0.05, shape) + np.where(labels == 1, 0.5, 0.0)
    dr1[labels == 2] = rng.normal(0.0, 0.05, (labels == 2).sum())  # no uptake
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {name: _nifti(tmp_path / f"{name}.nii.gz", data.astype(np.float32), affine)
             for name, data in (("labels", labels), ("dr1", dr1), ("gd", dr1 / 8.9),
                                ("mass", dr1 / 8.9 * 1000), ("t1", np.full(shape, 1.2)),
                                ("se", rng.normal(0, 2, shape)),
                                ("normal", brain.astype(np.uint8)))}
    node = pe.Node(LesionTable(labels=files["labels"], gd_conc=files["gd"],
                               mass_conc=files["mass"], delta_r1=files["dr1"],
                               t1_pre=files["t1"], t1_post=files["t1"],
                               enhancement=files["se"], timepoint="ses-D1", t1_method="vfa",
                               normal_mask=files["normal"], r1_per_mM_per_s=8.9,
                               dose_mg_per_kg=100.0, weight_kg=70.0),
                   name="table", base_dir=str(tmp_path))
    result = node.run().outputs
    table = pd.read_csv(result.out_tsv, sep="\t").set_index("lesion_id")
    assert table.loc[1, "quantification"] == "quantified"
    if offset == 0.0:
        assert table.loc[2, "quantification"] == "<LoQ"
    assert table.loc[1, "gd_mM_loq"] == pytest.approx(table.loc[1, "deltaR1_loq"] / 8.9)
    assert table.loc[1, "percent_injected_dose_per_g"] > 0
    controls = pd.read_csv(result.controls_tsv, sep="\t")
    assert len(controls) == 3
    assert controls["control_failed"].all() == (offset > 0)  # every control fails...
    assert controls["control_failed"].any() == (offset > 0)  # ...or none does
    dictionary = json.loads(open(result.out_json).read())
    assert "Levels" in dictionary["quantification"]
