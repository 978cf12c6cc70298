"""Group level (MRIQC-style, plain Python): gather participant tables, write group tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..bids import atomic_write_text
from ..group import combine_lesion_tables, participant_summary


def write_group_outputs(output_dir: Path, bids_dir: Path, participant_label=None) -> list[Path]:
    """Write ``group_lesions.tsv`` and ``group_participants.tsv``; idempotent."""
    output_dir = Path(output_dir)
    tables = {}
    for subject_dir in sorted(output_dir.glob("sub-*")):
        if not subject_dir.is_dir():
            continue
        if participant_label and subject_dir.name.removeprefix("sub-") not in participant_label:
            continue
        files = sorted(subject_dir.glob("**/anat/*_lesions.tsv"))
        if files:
            tables[subject_dir.name] = pd.concat(
                [pd.read_csv(f, sep="\t", na_values=["n/a"]) for f in files], ignore_index=True)
    lesions = combine_lesion_tables(tables)
    participants_tsv = Path(bids_dir) / "participants.tsv"
    participants = (pd.read_csv(participants_tsv, sep="\t", na_values=["n/a"], dtype={
        "participant_id": str}) if participants_tsv.exists() else None)
    summary = participant_summary(lesions, participants)
    written = []
    for name, frame in (("group_lesions.tsv", lesions), ("group_participants.tsv", summary)):
        path = output_dir / name
        atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a",
                                             float_format="%.6g"))
        written.append(path)
    return written
