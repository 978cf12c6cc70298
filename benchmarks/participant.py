"""Benchmark: one reference participant (3 sessions, VFA and MP2RAGE) through the participant
level.

Runs ``bids-agquant`` as a subprocess on a freshly written reference dataset at 1 mm and at
2 mm, samples the resident memory of the whole process tree (Nipype workers included) every
0.2 s, and reports wall time per stage from the Nipype node results.

Target (issue 2): 1 mm, 3 sessions: ≤ 3 min wall and ≤ 4 GB peak on a 2-core machine.

Usage: python benchmarks/participant.py [--resolutions 1 2] [--nprocs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

STAGES = {
    "fit_vfa": "VFA T1 fit",
    "fit_mp2rage": "MP2RAGE T1 fit",
    "register": "registration",
    "_to_ref": "resampling",
    "contours_to": "resampling",
    "uptake": "uptake maps",
    "enhancement": "SE map",
    "lesion_table": "lesion tables",
    "ds_": "derivative sinks",
    "mask": "masks",
    "prepare_contours": "masks",
}


def _tree_rss_bytes(root_pid: int) -> int:
    """Summed RSS of ``root_pid`` and all its descendants (from /proc)."""
    children = defaultdict(list)
    rss = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children[ppid].append(pid)
        rss[pid] = int(fields[21]) * page
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _stage_times(work_dir: Path) -> dict[str, float]:
    from nipype.utils.filemanip import loadpkl

    times: dict[str, float] = defaultdict(float)
    for result in work_dir.glob("**/result_*.pklz"):
        node = result.parent.name
        try:
            duration = float(loadpkl(result).runtime.duration)
        except Exception:  # a node without runtime information (e.g. identity)
            continue
        stage = next((label for key, label in STAGES.items() if key in node), "other")
        times[stage] += duration
    return dict(times)


def run_once(resolution_mm: int, root: Path, nprocs: int) -> dict:
    from bids_agquant.dro import make_dataset

    bids = root / f"bids-{resolution_mm}mm"
    start = time.perf_counter()
    make_dataset(bids, participants=1, resolution_mm=resolution_mm)
    dro_s = time.perf_counter() - start
    out, work = root / f"out-{resolution_mm}mm", root / f"work-{resolution_mm}mm"
    cmd = [sys.executable, "-m", "bids_agquant.cli.run", str(bids), str(out), "participant",
           "-w", str(work), "--nprocs", str(nprocs), "--skip-bids-validation"]
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"bids-agquant failed at {resolution_mm} mm (exit {proc.returncode})")
    return {"resolution_mm": resolution_mm, "dataset_s": dro_s, "wall_s": wall,
            "peak_gb": peak / 1e9, "stages": _stage_times(work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, default=None, help="keep files in this directory")
    opts = parser.parse_args()
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for res in opts.resolutions:
            r = run_once(res, root, opts.nprocs)
            print(f"\n== {res} mm, 1 participant, 3 sessions, {opts.nprocs} processes ==")
            print(f"reference dataset written in {r['dataset_s']:.1f} s")
            print(f"participant level: wall {r['wall_s']:.1f} s, peak RSS {r['peak_gb']:.2f} GB")
            print("node time by stage (summed over nodes, may exceed wall with parallelism):")
            for stage, seconds in sorted(r["stages"].items(), key=lambda kv: -kv[1]):
                print(f"  {stage:<18} {seconds:7.1f} s")
            if res == 1:
                met = r["wall_s"] <= 180 and r["peak_gb"] <= 4.0
                print(f"target ≤ 180 s and ≤ 4 GB at 1 mm: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
