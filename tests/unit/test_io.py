"""One NIfTI writer, atomic writes with normal permissions, no import-time side effects."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_agquant.io import atomic_write_text, is_inside, process_umask, save_nifti


def test_save_nifti_like_keeps_the_geometry(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    like = nb.Nifti1Image(np.zeros((3, 4, 5), np.int16), affine)
    like.header.set_qform(affine, code=1)
    like.header.set_sform(affine, code=2)
    path = save_nifti(tmp_path / "x.nii.gz", np.ones((3, 4, 5)), like=like, dtype=np.float32)
    out = nb.load(path)
    assert out.get_data_dtype() == np.float32
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    np.testing.assert_array_equal(out.affine, affine)
    assert out.header.get_slope_inter() in ((None, None), (1.0, 0.0))


def test_save_nifti_affine_sets_scanner_geometry(tmp_path):
    path = save_nifti(tmp_path / "y.nii", np.zeros((2, 2, 2)), affine=np.eye(4),
                      dtype=np.uint8, intent="label", header_fields={"descrip": b"test"})
    out = nb.load(path)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    assert out.header.get_intent()[0] == "label"
    with pytest.raises(ValueError):
        save_nifti(tmp_path / "z.nii", np.zeros(2), like=out, affine=np.eye(4))


def test_atomic_files_get_0666_minus_umask(tmp_path):
    old = os.umask(0o027)
    process_umask.cache_clear()
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_nifti(tmp_path / "b.nii.gz", np.zeros((2, 2, 2)), affine=np.eye(4), atomic=True)
    finally:
        os.umask(old)
        process_umask.cache_clear()
    for name in ("a.txt", "b.nii.gz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.nii.gz"]


def test_importing_the_app_does_not_touch_the_umask():
    code = ("import os; os.umask(0o077); import bids_agquant.io, bids_agquant.cli.run; "
            "m = os.umask(0); print(oct(m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "0o77"


def test_is_inside(tmp_path):
    assert is_inside(tmp_path / "a" / "b", tmp_path)
    assert is_inside(tmp_path, tmp_path)
    assert not is_inside(tmp_path.parent, tmp_path)
