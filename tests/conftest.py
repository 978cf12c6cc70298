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
