"""The app as a plain T1-mapping BIDS App: a dataset without sessions, without a T1w, with
only MP2RAGE images (and a B1+ map), run through the CLI against the T1 it was made from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_agquant.cli.run import main
from bids_agquant.qmri.mp2rage import MP2RAGEProtocol, mp2rage_signals

PROTOCOL = {"repetition_time_preparation_s": 5.0, "repetition_time_excitation_s": 0.0071,
            "inversion_times_s": (0.7, 2.5), "flip_angles_deg": (4.0, 5.0),
            "shots_before": 44, "shots_after": 88, "inversion_efficiency": 0.96}
SHAPE = (25, 29, 21)  # odd sizes on purpose (qMRLab's B1 correction crashes on them)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _phantom():
    """T1 (s), M0 and B1 fields: a 'brain' ellipsoid of WM/GM with a short-T1 'lesion'."""
    grid = np.indices(SHAPE, dtype=np.float64)
    centre = (np.array(SHAPE, dtype=np.float64) - 1) / 2
    rho = np.sqrt(sum(((g - c) / (0.45 * n)) ** 2
                      for g, c, n in zip(grid, centre, SHAPE, strict=True)))
    brain = rho <= 1.0
    t1 = np.where(rho < 0.6, 0.83, 1.33)
    lesion = np.sum([(g - c - 3) ** 2 for g, c in zip(grid, centre, strict=True)], axis=0) <= 9
    t1 = np.where(lesion, 0.35, t1)
    x = (grid[0] - centre[0]) / SHAPE[0]
    y = (grid[1] - centre[1]) / SHAPE[1]
    m0 = 800.0 * np.where(t1 < 1.0, 0.75, 0.82) * (1 + 0.1 * x)
    b1 = 1.0 + 0.15 * np.cos(np.pi * y) - 0.1 * x
    return np.where(brain, t1, 0.0), np.where(brain, m0, 0.0), b1, brain


def _write(path: Path, data, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE).to_filename(path)


def _json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=1))


def _dataset(root: Path, *, phase: bool, unit1: bool = False) -> tuple[np.ndarray, np.ndarray]:
    t1, m0, b1, brain = _phantom()
    s1, s2 = mp2rage_signals(np.where(brain, t1, 1.0), MP2RAGEProtocol(**PROTOCOL), b1=b1,
                             m0=m0)
    background = 0.3 + 0.02 * np.indices(SHAPE).sum(axis=0)  # coil/B0 phase, shared
    root.mkdir(parents=True)
    _json(root / "dataset_description.json", {"Name": "T1 mapping", "BIDSVersion": "1.10.0",
                                              "Authors": ["test"], "License": "CC0"})
    (root / "README.md").write_text("Plain MP2RAGE T1-mapping dataset for a test.\n" * 3)
    _json(root / "participants.json", {"participant_id": {"Description": "id"}})
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    _json(root / "MP2RAGE.json", {"MagneticFieldStrength": 3, "RepetitionTimeExcitation": 0.0071,
                                  "RepetitionTimePreparation": 5.0, "NumberShots": [44, 88]})
    anat = root / "sub-01" / "anat"
    for n, (signal, fa, ti) in enumerate(((s1, 4, 0.7), (s2, 5, 2.5)), start=1):
        complex_image = signal * np.exp(1j * background)
        _write(anat / f"sub-01_inv-{n}_part-mag_MP2RAGE.nii.gz", np.abs(complex_image))
        _json(anat / f"sub-01_inv-{n}_part-mag_MP2RAGE.json",
              {"FlipAngle": fa, "InversionTime": ti})
        if phase:
            _write(anat / f"sub-01_inv-{n}_part-phase_MP2RAGE.nii.gz", np.angle(complex_image))
            _json(anat / f"sub-01_inv-{n}_part-phase_MP2RAGE.json",
                  {"FlipAngle": fa, "InversionTime": ti, "Units": "rad"})
    if unit1:  # only the scanner's UNI image, its sidecar carrying both inversions
        for f in anat.glob("*_MP2RAGE.*"):
            f.unlink()
        uni = s1 * s2 / np.where(brain, s1**2 + s2**2, 1.0)
        _write(anat / "sub-01_UNIT1.nii.gz", np.rint(4095 * (uni + 0.5)), np.uint16)
        _json(anat / "sub-01_UNIT1.json", {"FlipAngle": [4, 5], "InversionTime": [0.7, 2.5],
                                           "RepetitionTimeExcitation": 0.0071,
                                           "RepetitionTimePreparation": 5.0,
                                           "NumberShots": [44, 88]})
    _write(root / "sub-01" / "fmap" / "sub-01_TB1map.nii.gz", 100 * b1)
    _json(root / "sub-01" / "fmap" / "sub-01_TB1map.json", {"Units": "percent"})
    return t1, brain


@pytest.mark.parametrize("source", ["complex", "magnitude", "unit1"])
def test_plain_t1_mapping_through_the_cli(tmp_path, source, caplog):
    bids = tmp_path / "bids"
    t1_true, brain = _dataset(bids, phase=source == "complex", unit1=source == "unit1")
    out = tmp_path / "out"
    # Array-valued FlipAngle in a UNIT1 sidecar is not BIDS-valid, but it is how a UNI-only
    # dataset can carry both inversions: accepted with validation skipped.
    skip = ["--skip-bids-validation"] if source == "unit1" else []
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), *skip])
    assert code == 0
    assert "nothing to compare" in caplog.text
    t1_img = nb.load(out / "sub-01" / "anat" / "sub-01_desc-mp2rage_T1map.nii.gz")
    t1 = np.asarray(t1_img.dataobj)
    np.testing.assert_allclose(t1_img.affine, AFFINE)
    inner = brain & (np.abs(np.gradient(t1_true)).sum(axis=0) == 0)  # away from PV borders
    error = np.abs(t1[inner] / t1_true[inner] - 1)
    lesion = inner & (t1_true < 0.5)
    assert lesion.sum() > 20
    if source == "complex":
        assert error.max() < 5e-3
    elif source == "unit1":  # 12-bit UNI: quantisation only
        assert np.median(error) < 2e-3 and np.mean(error < 1e-2) > 0.99
    else:  # the INV1 sign comes from a smooth-M0 prior: right in (almost) every voxel
        assert np.mean(error < 5e-3) > 0.99
    assert np.abs(t1[lesion] / 0.35 - 1).max() < (1e-2 if source == "unit1" else 5e-3)
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_desc-mp2rage_T1map.json").read_text())
    assert meta["Units"] == "s"
    assert meta["B1Correction"] == "bids:raw:sub-01/fmap/sub-01_TB1map.nii.gz"
    assert meta["NumberShots"] == [44, 88]
    assert not list(out.rglob("*_Gdconc*"))  # nothing to compare, no uptake maps
