"""Real-site variants through the CLI on small phantoms (issue 14): B1+ in every BIDS
representation, units that must be stated or overridden, 7 T, MP2RAGE-ME, slabs.

Each dataset is a plain T1-mapping dataset (no sessions, no T1w) whose truth is known: T1 and
B1+ are fields of the phantom, the images are made with the app's forward models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_agquant.cli.run import main
from bids_agquant.qmri.vfa import spgr_signal

SHAPE = (23, 27, 19)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
FLIPS, TR = (3.0, 8.0, 15.0, 20.0), 0.015


def _phantom(shape=SHAPE, radius=0.45):
    """T1 (s), M0 and B1+ fields: an ellipsoid 'head' of WM/GM with a short-T1 'lesion'."""
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    rho = np.sqrt(sum(((g - c) / (radius * n)) ** 2
                      for g, c, n in zip(grid, centre, shape, strict=True)))
    head = rho <= 1.0
    t1 = np.where(rho < 0.6, 0.83, 1.33)
    t1 = np.where(np.sum([(g - c - 2) ** 2 for g, c in zip(grid, centre, strict=True)],
                         axis=0) <= 6, 0.35, t1)
    m0 = 800.0 * np.where(t1 < 1.0, 0.75, 0.82)
    x = (grid[0] - centre[0]) / shape[0]
    y = (grid[1] - centre[1]) / shape[1]
    b1 = 1.0 + 0.15 * np.cos(np.pi * y) - 0.2 * x
    return np.where(head, t1, 0.0), np.where(head, m0, 0.0), b1, head


def _write(path: Path, data, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE).to_filename(path)


def _json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _root(root: Path, field=3) -> Path:
    _json(root / "dataset_description.json", {"Name": "site", "BIDSVersion": "1.10.0",
                                              "Authors": ["test"], "License": "CC0"})
    (root / "README.md").write_text("A plain T1-mapping dataset for a test.\n" * 3)
    _json(root / "participants.json", {"participant_id": {"Description": "id"}})
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    return root


def _vfa(root: Path, t1, m0, b1, head, field=3):
    for n, flip in enumerate(FLIPS, start=1):
        signal = spgr_signal(m0, np.where(head, t1, 1.0), flip, TR, b1=b1)
        _write(root / "sub-01" / "anat" / f"sub-01_flip-{n}_VFA.nii.gz", signal)
        _json(root / "sub-01" / "anat" / f"sub-01_flip-{n}_VFA.json",
              {"FlipAngle": flip, "RepetitionTimeExcitation": TR, "PulseSequenceType": "SPGR",
               "MagneticFieldStrength": field})


def _raw_b1(root: Path, suffix: str, t1, m0, b1, head, magnitude_only=False):
    """The raw B1+ images of ``suffix`` made from the phantom (noise-free)."""
    from bids_agquant.dro.b1 import SA2RAGE_PROTOCOL
    from bids_agquant.qmri import b1 as qb1

    fmap = root / "sub-01" / "fmap"
    t1_safe = np.where(head, t1, 1.0)
    if suffix == "TB1TFL":
        _write(fmap / "sub-01_acq-anat_TB1TFL.nii.gz", m0)
        _json(fmap / "sub-01_acq-anat_TB1TFL.json", {"FlipAngle": 80})
        _write(fmap / "sub-01_acq-famp_TB1TFL.nii.gz", np.rint(800 * b1), np.uint16)
        _json(fmap / "sub-01_acq-famp_TB1TFL.json", {"FlipAngle": 80})
    elif suffix == "TB1AFI":
        s1, s2 = qb1.afi_signals(t1_safe, b1, 60.0, 0.02, 0.1, m0=m0 + 1.0)
        for n, (s, tr) in enumerate(((s1, 0.02), (s2, 0.1)), start=1):
            _write(fmap / f"sub-01_acq-tr{n}_TB1AFI.nii.gz", s)
            _json(fmap / f"sub-01_acq-tr{n}_TB1AFI.json", {"FlipAngle": 60, "RepetitionTime": tr})
    elif suffix == "TB1DAM":
        s_a, s_2a = qb1.dam_signals(b1, 60.0, m0=m0 + 1.0)
        for n, (s, flip) in enumerate(((s_a, 60), (s_2a, 120)), start=1):
            _write(fmap / f"sub-01_flip-{n}_TB1DAM.nii.gz", np.abs(s))
            _json(fmap / f"sub-01_flip-{n}_TB1DAM.json", {"FlipAngle": flip})
    elif suffix == "TB1SRGE":
        from bids_agquant.qmri.sa2rage import SA2RAGEProtocol, sa2rage_signals

        protocol = SA2RAGEProtocol(**SA2RAGE_PROTOCOL)
        s1, s2 = sa2rage_signals(np.full(SHAPE, 1.5), protocol, b1=b1, m0=m0 + 1.0)
        coil = 0.3 + 0.05 * np.indices(SHAPE).sum(axis=0)  # shared by both readouts
        for n, s in enumerate((s1, s2), start=1):
            side = {"FlipAngle": SA2RAGE_PROTOCOL["flip_angles_deg"][n - 1],
                    "InversionTime": SA2RAGE_PROTOCOL["inversion_times_s"][n - 1],
                    "RepetitionTimePreparation": 2.4, "RepetitionTimeExcitation": 0.00275,
                    "NumberShots": [SA2RAGE_PROTOCOL["shots_before"],
                                    SA2RAGE_PROTOCOL["shots_after"]]}
            stem = f"sub-01_flip-{n}_inv-{n}"
            _write(fmap / f"{stem}_part-mag_TB1SRGE.nii.gz", np.abs(s))
            _json(fmap / f"{stem}_part-mag_TB1SRGE.json", side)
            if not magnitude_only:
                _write(fmap / f"{stem}_part-phase_TB1SRGE.nii.gz",
                       np.angle(np.exp(1j * (coil + np.where(s < 0, np.pi, 0.0)))))
                _json(fmap / f"{stem}_part-phase_TB1SRGE.json", {**side, "Units": "rad"})


def _run(bids: Path, tmp_path: Path, *extra) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", *extra])
    return code, out


def _inner(t1, head):
    return head & (np.abs(np.gradient(t1)).sum(axis=0) == 0)  # away from PV borders


METHODS = {"TB1TFL": "tfl", "TB1AFI": "afi", "TB1DAM": "dam", "TB1SRGE": "sa2rage"}
#: (median, max) relative B1+ error inside the phantom, noise-free: TFL integer famp
#: (±0.5/800); AFI Yarnykh's first-order relation, 0.2-0.5 % at T1 0.83-1.33 s and 1.2 % at
#: the lesion's 0.35 s (qmri.b1.afi_signals, TR 20/100 ms, 60°); DAM exact (fully relaxed);
#: SA2RAGE exact at the assumed T1 (the phantom's images are made at T1 = 1.5 s).
B1_TOLERANCE = {"TB1TFL": (2e-3, 1e-2), "TB1AFI": (5e-3, 1.5e-2), "TB1DAM": (2e-3, 1e-2),
                "TB1SRGE": (2e-3, 1e-2)}


@pytest.mark.parametrize("suffix", list(METHODS))
def test_vfa_with_each_raw_b1_representation(tmp_path, suffix, caplog):
    """The computed B1+ is written as a derivative, named in every T1 sidecar, and corrects
    the VFA fit: T1 as accurate as with the true B1+ (noise-free phantom)."""
    t1, m0, b1, head = _phantom()
    bids = _root(tmp_path / "bids")
    _vfa(bids, t1, m0, b1, head)
    _raw_b1(bids, suffix, t1, m0, b1, head)
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 0, caplog.text[-3000:]
    name = f"sub-01_desc-{METHODS[suffix]}_TB1map"
    b1_img = nb.load(out / "sub-01" / "fmap" / f"{name}.nii.gz")
    side = json.loads((out / "sub-01" / "fmap" / f"{name}.json").read_text())
    assert side["Units"] == "fraction" and side["B1Method"] == suffix
    assert all(uri.startswith("bids:raw:sub-01/fmap/") for uri in side["Sources"])
    assert side["EstimationAlgorithm"] and side["EstimationReference"]
    inner = _inner(t1, head)
    b1_error = np.abs(np.asarray(b1_img.dataobj)[inner] / b1[inner] - 1)
    median_tol, max_tol = B1_TOLERANCE[suffix]
    assert np.median(b1_error) < median_tol and b1_error.max() < max_tol
    t1_fit = np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.nii.gz")
                        .dataobj)
    t1_error = np.abs(t1_fit[inner] / t1[inner] - 1)
    # R1 scales about as B1², so T1 carries about twice the B1+ error.
    assert np.median(t1_error) < 2.5 * median_tol and np.percentile(t1_error, 99) < 3e-2
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.json").read_text())
    assert meta["B1Correction"] == f"bids::sub-01/fmap/{name}.nii.gz"
    assert meta["B1Method"] == suffix


def test_magnitude_only_sa2rage_is_refused_naming_the_phase_images(tmp_path, caplog):
    t1, m0, b1, head = _phantom()
    bids = _root(tmp_path / "bids")
    _vfa(bids, t1, m0, b1, head)
    _raw_b1(bids, "TB1SRGE", t1, m0, b1, head, magnitude_only=True)
    with caplog.at_level(logging.ERROR, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 65 and "part-phase" in caplog.text and "ambiguous" in caplog.text
    assert not (out / "sub-01").exists()


def _b1map_dataset(tmp_path, values, sidecar):
    t1, m0, b1, head = _phantom()
    bids = _root(tmp_path / "bids")
    _vfa(bids, t1, m0, b1, head)
    _write(bids / "sub-01" / "fmap" / "sub-01_TB1map.nii.gz", values(b1))
    _json(bids / "sub-01" / "fmap" / "sub-01_TB1map.json", sidecar)
    return bids, t1, head


def test_famp_stored_as_tb1map_is_refused_then_read_with_b1_units(tmp_path, caplog):
    """A tfl_b1map famp exported as TB1map without Units (median ~800): per mille and
    10 × degrees are both possible, so the run refuses before writing anything; --b1-units
    degrees-x10 (÷ 10 × the sidecar FlipAngle) then gives the right T1."""
    bids, t1, head = _b1map_dataset(tmp_path, lambda b1: np.rint(800 * b1), {"FlipAngle": 80})
    with caplog.at_level(logging.ERROR, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 65
    assert "sub-01_TB1map.nii.gz" in caplog.text and "--b1-units" in caplog.text
    assert not (out / "sub-01").exists()
    code, out = _run(bids, tmp_path, "--b1-units", "degrees-x10")
    assert code == 0
    t1_fit = np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.nii.gz")
                        .dataobj)
    inner = _inner(t1, head)
    assert np.median(np.abs(t1_fit[inner] / t1[inner] - 1)) < 5e-3


def test_implausible_b1_is_refused_naming_the_median(tmp_path, caplog):
    """Percent declared, but the values are a fraction ×10 (median ~10 % → 0.1)."""
    bids, _t1, _head = _b1map_dataset(tmp_path, lambda b1: 10 * b1, {"Units": "percent"})
    with caplog.at_level(logging.ERROR, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 65
    assert "implausible B1+ map" in caplog.text and "median" in caplog.text
    assert not (out / "sub-01").exists()


def test_b1_map_covering_part_of_the_head_is_refused(tmp_path, caplog):
    def half(b1):
        cut = b1.copy()
        cut[: SHAPE[0] // 2] = 0.0  # a slab B1+ map over half of the head
        return cut

    bids, _t1, _head = _b1map_dataset(tmp_path, half, {"Units": "fraction"})
    with caplog.at_level(logging.ERROR, logger="bids_agquant"):
        code, _out = _run(bids, tmp_path)
    assert code == 65 and "covered" in caplog.text


def test_units_guess_is_a_warning_in_the_log_and_the_report(tmp_path, caplog):
    bids, _t1, _head = _b1map_dataset(tmp_path, lambda b1: 100 * b1, {})
    with caplog.at_level(logging.WARNING, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 0
    guesses = [r for r in caplog.records
               if r.levelno == logging.WARNING and "no Units" in r.getMessage()]
    assert len(guesses) == 1
    html = (out / "sub-01.html").read_text()
    assert "no Units" in html


def test_vfa_without_b1_warns_with_the_bias_size(tmp_path, caplog):
    t1, m0, b1, head = _phantom()
    bids = _root(tmp_path / "bids")
    _vfa(bids, t1, m0, b1, head)
    with caplog.at_level(logging.WARNING, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 0
    assert "no B1+ map" in caplog.text and "-19 %" in caplog.text
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.json").read_text())
    assert meta["B1Correction"] == "none" and "-19 %" in meta["B1Warning"]
    assert "-19 %" in (out / "sub-01.html").read_text()


@pytest.mark.parametrize("field", [1.5, 7, None])
def test_plain_vfa_t1_mapping_at_any_field_strength(tmp_path, field):
    t1, m0, b1, head = _phantom()
    bids = _root(tmp_path / "bids")
    _vfa(bids, t1, m0, np.ones_like(b1), head, field=field)
    if field is None:
        for side in (bids / "sub-01" / "anat").glob("*.json"):
            meta = json.loads(side.read_text())
            meta.pop("MagneticFieldStrength")
            side.write_text(json.dumps(meta))
    code, out = _run(bids, tmp_path)
    assert code == 0
    assert (out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.nii.gz").is_file()


def test_a_six_slice_slab_is_fitted_to_its_edges(tmp_path):
    """A slab acquisition whose object fills every slice: no edge slice is blanked."""
    shape = (20, 24, 6)
    t1 = np.full(shape, 1.0)
    m0 = np.full(shape, 700.0)
    bids = _root(tmp_path / "bids")
    for n, flip in enumerate(FLIPS, start=1):
        _write(bids / "sub-01" / "anat" / f"sub-01_flip-{n}_VFA.nii.gz",
               spgr_signal(m0, t1, flip, TR))
        _json(bids / "sub-01" / "anat" / f"sub-01_flip-{n}_VFA.json",
              {"FlipAngle": flip, "RepetitionTimeExcitation": TR, "PulseSequenceType": "SPGR",
               "MagneticFieldStrength": 3})
    code, out = _run(bids, tmp_path)
    assert code == 0
    fit = np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.nii.gz").dataobj)
    assert np.count_nonzero(fit) == fit.size
    np.testing.assert_allclose(fit, 1.0, rtol=1e-3)


def test_mp2rage_me_at_7t(tmp_path, caplog):
    """MP2RAGE-ME at 7 T, plain T1 mapping: INV2 multi-echo with its own echo spacing (32 ms
    against 6.2 ms on INV1); the first echo is used and T1 is recovered."""
    from bids_agquant.qmri.mp2rage import MP2RAGEProtocol, mp2rage_signals

    protocol = {"repetition_time_preparation_s": 6.0, "repetition_time_excitation_s": 0.0062,
                "repetition_time_excitation_inv2_s": 0.032, "inversion_times_s": (0.8, 2.7),
                "flip_angles_deg": (4.0, 5.0), "shots_before": 30, "shots_after": 60,
                "inversion_efficiency": 0.96}
    t1, m0, _b1, head = _phantom()
    s1, s2 = mp2rage_signals(np.where(head, t1, 1.0), MP2RAGEProtocol(**protocol), m0=m0)
    bids = _root(tmp_path / "bids")
    _json(bids / "MP2RAGE.json", {"MagneticFieldStrength": 7, "RepetitionTimePreparation": 6.0,
                                  "NumberShots": [30, 60]})
    anat = bids / "sub-01" / "anat"
    phase = 0.3 + 0.02 * np.indices(SHAPE).sum(axis=0)
    _write(anat / "sub-01_inv-1_part-mag_MP2RAGE.nii.gz", np.abs(s1))
    _write(anat / "sub-01_inv-1_part-phase_MP2RAGE.nii.gz", np.where(s1 < 0, np.pi, 0) + phase)
    for part in ("mag", "phase"):
        _json(anat / f"sub-01_inv-1_part-{part}_MP2RAGE.json",
              {"FlipAngle": 4, "InversionTime": 0.8, "RepetitionTimeExcitation": 0.0062,
               **({"Units": "rad"} if part == "phase" else {})})
    for echo in (1, 2, 3):
        decay = np.exp(-(echo - 1) * 0.008 / 0.025)  # T2* decay of the later echoes
        _write(anat / f"sub-01_inv-2_echo-{echo}_part-mag_MP2RAGE.nii.gz", np.abs(s2) * decay)
        _write(anat / f"sub-01_inv-2_echo-{echo}_part-phase_MP2RAGE.nii.gz",
               np.where(s2 < 0, np.pi, 0) + phase)
        for part in ("mag", "phase"):
            _json(anat / f"sub-01_inv-2_echo-{echo}_part-{part}_MP2RAGE.json",
                  {"FlipAngle": 5, "InversionTime": 2.7, "RepetitionTimeExcitation": 0.032,
                   "EchoTime": 0.002 + 0.008 * (echo - 1),
                   **({"Units": "rad"} if part == "phase" else {})})
    with caplog.at_level(logging.INFO, logger="bids_agquant"):
        code, out = _run(bids, tmp_path)
    assert code == 0, caplog.text[-3000:]
    assert caplog.text.count("the first echo of each inversion is used") == 1
    fit = np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_desc-mp2rage_T1map.nii.gz")
                     .dataobj)
    inner = _inner(t1, head)
    assert np.abs(fit[inner] / t1[inner] - 1).max() < 5e-3
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_desc-mp2rage_T1map.json").read_text())
    assert meta["RepetitionTimeExcitation"] == [0.0062, 0.032]


def test_b1_map_with_nan_outside_the_head_is_read(tmp_path):
    """hMRI-style map: percent ('p.u.'), NaN where nothing was measured."""
    bids, t1, head = _b1map_dataset(
        tmp_path, lambda b1: np.where(_phantom()[3], 100 * b1, np.nan), {"Units": "p.u."})
    code, out = _run(bids, tmp_path)
    assert code == 0
    fit = np.asarray(nb.load(out / "sub-01" / "anat" / "sub-01_desc-vfa_T1map.nii.gz").dataobj)
    inner = _inner(t1, head)
    assert np.median(np.abs(fit[inner] / t1[inner] - 1)) < 5e-3
