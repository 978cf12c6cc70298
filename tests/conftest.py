"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dro2mm(tmp_path_factory):
    """The reference digital reference object: 3 participants, 2 mm, default SNR and seed.

    Returns a :class:`bids_agquant.dro.DRO` (``bids_dir``, ``contours_dir``, ``truth_dir``).
    Generated once per test session (about 15 s); tests must not modify it (copy it first).
    """
    from bids_agquant.dro import make_dataset

    return make_dataset(tmp_path_factory.mktemp("dro") / "bids", participants=3, resolution_mm=2)


@pytest.fixture(scope="session")
def reference_run(dro2mm, tmp_path_factory):
    """Participant then group level on ``dro2mm``, once per session, made the way a cluster
    makes it: one ``bids-agquant`` process per participant, all at once, into one output and
    one work directory (validated input, one core each); then the group level.

    Shared by the end-to-end, report and parallel-safety tests (a run costs minutes). Returns
    a dict with ``root``, ``bids``, ``truth``, ``out``, ``work`` and ``subjects``. Tests may
    add runs into ``out`` and ``work`` (a cached re-run) but must not delete or edit results
    others read.
    """
    import os
    import subprocess
    import sys

    from bids_agquant.cli.run import main

    root = tmp_path_factory.mktemp("reference_run")
    out, work = root / "out", root / "work"
    subjects = sorted(p.name[4:] for p in dro2mm.bids_dir.glob("sub-*") if p.is_dir())
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    jobs = {
        subject: subprocess.Popen(
            [sys.executable, "-m", "bids_agquant.cli.run", str(dro2mm.bids_dir), str(out),
             "participant", "--participant-label", subject, "-w", str(work), "--nprocs", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for subject in subjects
    }
    errors = {subject: job.communicate(timeout=3600)[1] for subject, job in jobs.items()}
    for subject, job in jobs.items():
        assert job.returncode == 0, f"sub-{subject}: {errors[subject][-3000:]}"
    assert main([str(dro2mm.bids_dir), str(out), "group"]) == 0
    return {"root": root, "bids": dro2mm.bids_dir, "truth": dro2mm.truth_dir, "out": out,
            "work": work, "subjects": subjects}


def require_program(*names: str) -> None:
    """Skip the calling test when a system program is missing, unless CI requires it.

    ``.ci/run`` installs every system package the tests use (chromium, slurm-wlm, munge,
    podman) and sets ``BIDS_AGQUANT_REQUIRE_SYSTEM=1``: there a missing program is a failure,
    never a silent skip. A developer without the packages gets a skip naming what is missing.
    """
    import os
    import shutil

    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"system program(s) not installed: {', '.join(missing)}"
    if os.environ.get("BIDS_AGQUANT_REQUIRE_SYSTEM") == "1":
        pytest.fail(message + " (required: BIDS_AGQUANT_REQUIRE_SYSTEM=1)")
    pytest.skip(message)
