"""Benchmark: writing the HTML reports of the reference dataset.

Writes the 3-participant reference dataset, runs the participant and group levels once (not
timed), then times ``write_participant_report`` for every participant and
``write_group_report`` (wall and CPU seconds, report size, peak RSS of this process).

Target (issue 5): a participant report in well under 20 s at 2 mm, so a report never weighs
on a run.

Usage: python benchmarks/report.py [--resolution 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, choices=[1, 2], default=2)
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    opts = parser.parse_args()

    from bids_agquant.cli.run import main as run_main
    from bids_agquant.dro import make_dataset
    from bids_agquant.reports import write_group_report, write_participant_report

    root = opts.keep or Path(tempfile.mkdtemp(prefix="agquant-report-bench-"))
    bids, out, work = root / "bids", root / "out", root / "work"
    if not (bids / "dataset_description.json").exists():
        make_dataset(bids, participants=3, resolution_mm=opts.resolution)
    common = [str(bids), str(out)]
    assert run_main([*common, "participant", "-w", str(work), "--skip-bids-validation"]) == 0
    assert run_main([*common, "group"]) == 0

    print(f"\nreports at {opts.resolution} mm ({root})")
    print(f"  {'report':<12}{'wall s':>8}{'CPU s':>8}{'size MB':>9}")
    for subject_dir in sorted(p for p in out.glob("sub-*") if p.is_dir()):
        subject = subject_dir.name[4:]
        run_uuid = sorted((subject_dir / "log").iterdir())[-1].name
        wall, cpu = time.perf_counter(), time.process_time()
        path = write_participant_report(out, subject, run_uuid)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"  {path.name:<12}{wall:>8.1f}{cpu:>8.1f}{path.stat().st_size / 1e6:>9.2f}")
    wall, cpu = time.perf_counter(), time.process_time()
    path = write_group_report(out, bids_dir=bids)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {path.name:<12}{wall:>8.1f}{cpu:>8.1f}{path.stat().st_size / 1e6:>9.2f}")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"  peak RSS of this process (run included): {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
