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
