"""Several participant jobs writing one output directory at once (issue: containers and HPC).

A Slurm array starts one job per participant, all with the same output directory (and often
the same ``-w``). Dataset-level files (dataset_description.json, .bidsignore,
descriptions.tsv) are written by every job, at its start and at its end; they are replaced
atomically, so a reader or a concurrent writer never sees a torn file. Each job indexes the
raw dataset in memory (no shared pybids database) and runs its own participant sub-workflow.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bids_agquant.derivatives import BIDSIGNORE


@pytest.mark.slow
def test_three_concurrent_participant_jobs_share_one_output_directory(reference_run):
    """The shared reference run is three concurrent participant jobs (tests/conftest.py)."""
    out, truth_dir = reference_run["out"], reference_run["truth"]
    assert reference_run["subjects"] == ["01", "02", "03"]

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids-agquant"
    assert (out / ".bidsignore").read_text().splitlines() == BIDSIGNORE
    descriptions = pd.read_csv(out / "descriptions.tsv", sep="\t")
    assert {"desc-vfa", "desc-mp2rage", "desc-GTV"} <= set(descriptions["desc_id"])
    assert not list(out.rglob(".*.tmp"))

    truth = pd.read_csv(truth_dir / "lesions.tsv", sep="\t", na_values=["n/a"])
    for sub in ("01", "02", "03"):
        logs = sorted((out / f"sub-{sub}" / "log").glob("*/bids_agquant.toml"))
        assert logs and f'participant_label = ["{sub}"]' in logs[0].read_text()  # own job
        assert not list((out / f"sub-{sub}" / "log").rglob("crash-*"))
        tables = list((out / f"sub-{sub}").rglob("*_lesions.tsv"))
        rows = pd.concat(pd.read_csv(t, sep="\t", na_values=["n/a"]) for t in tables)
        expected = truth[(truth["participant_id"] == f"sub-{sub}")
                         & (truth["timepoint"] != "ses-D0")]
        methods = rows["t1_method"].nunique()
        assert len(rows) == len(expected) * methods, f"sub-{sub}: lesion rows missing"
        assert rows["gd_mM_mean"].notna().all()
