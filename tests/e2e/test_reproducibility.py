"""Determinism, interruption and resume, read-only input, no network (issue: reliability).

Runs go through the console entry point in a subprocess, as a user or a batch job would start
them. The input dataset is bind-mounted read-only and the process runs in a network namespace
without interfaces, so "never writes the input" and "needs no network" are enforced by the
kernel, not just observed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import pytest

PARTICIPANT = "03"  # VFA only, three timepoints: the cheapest complete participant


def _privileged() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        message = "needs root, mount and unshare (read-only bind mount, network namespace)"
        if os.environ.get("BIDS_AGQUANT_REQUIRE_SYSTEM") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def readonly_bids(dro2mm, tmp_path_factory):
    """The reference dataset, bind-mounted read-only."""
    _privileged()
    mount_point = tmp_path_factory.mktemp("ro") / "bids"
    mount_point.mkdir()
    subprocess.run(["mount", "--bind", str(dro2mm.bids_dir), str(mount_point)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mount_point)], check=True)
        with pytest.raises(OSError):
            (mount_point / "probe").write_text("x")
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _command(bids: Path, root: Path) -> list[str]:
    return ["unshare", "--net", sys.executable, "-m", "bids_agquant.cli.run", str(bids),
            str(root / "out"), "participant", "--participant-label", PARTICIPANT,
            "-w", str(root / "work"), "--nprocs", "2", "--omp-nthreads", "1",
            "--random-seed", "1234", "--session-label", "D1"]  # D0 and D1: enough, faster


def _env() -> dict:
    return {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONUNBUFFERED": "1"}


def _results(out: Path) -> dict[str, bytes]:
    """Every result file's content (NIfTI decompressed: gzip stores a time stamp)."""
    files = {}
    for path in sorted((out / f"sub-{PARTICIPANT}").rglob("*")):
        rel = path.relative_to(out)
        if not path.is_file() or "log" in rel.parts or path.suffix == ".html":
            continue
        data = path.read_bytes()
        files[str(rel)] = gzip.decompress(data) if path.name.endswith(".gz") else data
    return files


@pytest.fixture(scope="module")
def reference_run(readonly_bids, tmp_path_factory):
    root = tmp_path_factory.mktemp("run_a")
    proc = subprocess.run(_command(readonly_bids, root), env=_env(), capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out"


@pytest.mark.slow
def test_two_runs_with_the_same_seed_are_bit_identical(readonly_bids, reference_run,
                                                       tmp_path):
    proc = subprocess.run(_command(readonly_bids, tmp_path), env=_env(), capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = _results(reference_run), _results(tmp_path / "out")
    assert any(name.endswith("_Gdconc.nii.gz") for name in first)
    assert any(name.endswith("_lesions.tsv") for name in first)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert not different


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(readonly_bids, reference_run, tmp_path):
    command = _command(readonly_bids, tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        # Kill once the first maps are written and the registrations are under way.
        while not list(out.rglob("*_R1map.nii.gz")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            time.sleep(0.2)
        time.sleep(3.0)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    interrupted = _results(out)
    assert not any(name.endswith("_lesions.tsv") for name in interrupted), "not mid-way"
    # Whatever the interrupted run left is complete: every NIfTI loads in full, and no file
    # sits under its final name half-written (temporaries are hidden and end in .tmp).
    for path in out.rglob("*.nii.gz"):
        if not path.name.startswith("."):
            assert nb.load(path).get_fdata().size > 0

    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(out.rglob(".*.tmp"))
    expected, got = _results(reference_run), _results(out)
    assert sorted(got) == sorted(expected)
    assert not [name for name in expected if expected[name] != got[name]]
