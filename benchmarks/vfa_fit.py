"""Benchmark: VFA T1 fit (``bids_agquant.qmri.vfa.fit_vfa``) of a 1 mm whole-brain volume.

One core (BLAS/OpenMP threads pinned to 1 before numpy is imported). The phantom sits on the
MNI152 1 mm grid (197 x 233 x 189; nilearn's brain mask and GM/WM probability maps, all
shipped with nilearn, no download). Tissue values at 3 T: T1 WM 0.83 s, GM 1.33 s,
CSF 4.2 s (R1 mixed by partial volume); M0 (proton density) WM 0.69, GM 0.80,
CSF 1.00 x 1000. B1+ is a smooth field clipped to 0.80-1.20. The protocol is the project
reference: flip angles 2/5/10/15 deg, TR 15 ms. Gaussian noise, SNR 100 (WM signal of
the brightest flip angle / sigma).

``fit_vfa`` is timed for the methods linear, wlls and nlls, with the B1 map and the brain
mask (best of ``--repeats``; NLLS and WLLS best of ``--repeats-iterative``). Throughput is
given in mask voxels per second of wall time, and of process CPU time: the two agree on an
idle machine, and the CPU figure is the one to trust when other processes share the cores
(the load average is printed). The memory figures are the tracemalloc peak of one extra
fit (numpy buffers allocated by the fit, on top of the inputs: output maps, mask index and
chunk temporaries) and the process peak RSS.

Targets: linear >= 10 M voxels/s, NLLS >= 0.5 M voxels/s on one core; whole script < 2 min.

Usage: python benchmarks/vfa_fit.py [--repeats 3] [--repeats-iterative 2] [--seed 0]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from bids_agquant.qmri.vfa import VFA_METHODS, fit_vfa, spgr_signal  # noqa: E402

FLIPS_DEG = (2.0, 5.0, 10.0, 15.0)
TR_S = 0.015
T1_S = {"wm": 0.83, "gm": 1.33, "csf": 4.2}
M0 = {"wm": 690.0, "gm": 800.0, "csf": 1000.0}
SNR = 100.0
TARGET_VOX_PER_S = {"linear": 10e6, "nlls": 0.5e6}


def make_phantom(seed: int = 0):
    """MNI152 1 mm phantom: ``(signals float32 (..., 4), b1, mask, t1_true, pure_wm)``."""
    from nilearn import datasets

    # C order, like the stacked NIfTI volumes of the pipeline (nilearn's arrays are F order)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.ascontiguousarray(np.asarray(mask_img.dataobj) > 0)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    gm_in, wm_in = gm[mask].astype(np.float64), wm[mask].astype(np.float64)
    csf_in = np.clip(1.0 - gm_in - wm_in, 0.0, 1.0)
    total = gm_in + wm_in + csf_in
    frac = {"gm": gm_in / total, "wm": wm_in / total, "csf": csf_in / total}
    r1 = sum(frac[t] / T1_S[t] for t in frac)
    m0 = sum(frac[t] * M0[t] for t in frac)

    # smooth B1+: quadratic fall-off from the centre of the brain, 0.80-1.20 over the mask
    coords = np.argwhere(mask).astype(np.float64)
    centre = coords.mean(axis=0)
    radius = np.linalg.norm((coords - centre) / (coords.max(axis=0) - centre), axis=1)
    tilt = (coords[:, 2] - centre[2]) / (coords[:, 2].max() - centre[2])
    b1_in = np.clip(1.18 - 0.3 * radius**2 + 0.05 * tilt, 0.8, 1.2)

    sig_in = spgr_signal(m0, 1.0 / r1, FLIPS_DEG, TR_S, b1_in)
    sigma = spgr_signal(M0["wm"], T1_S["wm"], FLIPS_DEG, TR_S).max() / SNR
    rng = np.random.default_rng(seed)
    signals = np.zeros(mask.shape + (len(FLIPS_DEG),), dtype=np.float32)
    signals[mask] = sig_in
    signals += rng.normal(0.0, sigma, size=signals.shape).astype(np.float32)
    b1 = np.ones(mask.shape, dtype=np.float32)
    b1[mask] = b1_in
    t1_true = np.zeros(mask.shape)
    t1_true[mask] = 1.0 / r1
    pure_wm = np.zeros(mask.shape, dtype=bool)
    pure_wm[mask] = frac["wm"] > 0.99
    return signals, b1, mask, t1_true, pure_wm


def time_fit(signals, b1, mask, method: str, repeats: int):
    """``(wall, cpu)`` times (s) of ``repeats`` fits, and the last result.

    The process CPU time (user + system) equals the wall time on an idle core; when other
    processes compete for the cores the wall time grows and the CPU time does not.
    """
    times = []
    fit = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fit = fit_vfa(signals, FLIPS_DEG, TR_S, b1=b1, mask=mask, method=method)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times, fit


def traced_peak_mb(signals, b1, mask, method: str) -> float:
    """tracemalloc peak (MiB) of one fit: outputs, mask index and chunk temporaries."""
    tracemalloc.start()
    try:
        fit_vfa(signals, FLIPS_DEG, TR_S, b1=b1, mask=mask, method=method)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of linear")
    parser.add_argument(
        "--repeats-iterative", type=int, default=2, help="timed runs of wlls and nlls"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    signals, b1, mask, t1_true, pure_wm = make_phantom(args.seed)
    n_mask = int(mask.sum())
    print(
        f"phantom: grid {mask.shape}, {n_mask:,} mask voxels, {len(FLIPS_DEG)} flips "
        f"{FLIPS_DEG} deg, TR {TR_S * 1e3:g} ms, SNR {SNR:g}, B1 "
        f"{b1[mask].min():.2f}-{b1[mask].max():.2f}, signals {signals.nbytes / 2**20:.0f} MB "
        f"float32 ({time.perf_counter() - t_start:.1f} s to build)"
    )
    print(f"numpy {np.__version__}, 1 thread\n")
    header = (
        f"{'method':8s} {'runs':>4s} {'first s':>8s} {'best s':>8s} {'cpu s':>7s} {'Mvox/s':>8s} "
        f"{'cpu Mvox/s':>10s} {'target':>7s} {'traced MiB':>10s} {'valid %':>8s} "
        f"{'WM T1 med err %':>16s} {'WM T1 IQR %':>12s}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    for method in VFA_METHODS:
        repeats = args.repeats if method == "linear" else args.repeats_iterative
        times, fit = time_fit(signals, b1, mask, method, repeats)
        best, best_cpu = min(times)
        peak_mb = traced_peak_mb(signals, b1, mask, method)
        rate = n_mask / best
        target = TARGET_VOX_PER_S.get(method)
        rel = fit.t1_s[pure_wm] / t1_true[pure_wm] - 1.0
        q25, q50, q75 = np.percentile(rel, [25, 50, 75]) * 100
        valid_pct = 100.0 * fit.valid[mask].mean()
        target_txt = "-" if target is None else f"{target / 1e6:g}"
        print(
            f"{method:8s} {repeats:4d} {times[0][0]:8.3f} {best:8.3f} {best_cpu:7.3f} "
            f"{rate / 1e6:8.2f} {n_mask / best_cpu / 1e6:10.2f} {target_txt:>7s} {peak_mb:10.0f} "
            f"{valid_pct:8.2f} {q50:16.2f} {q75 - q25:12.2f}"
        )
        if target is not None and rate < target:
            failures.append(f"{method}: {rate / 1e6:.2f} M voxels/s < target {target / 1e6:g}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    load = os.getloadavg()[0]
    print(
        "\nfirst s: first call of the method in this process (the very first one also pays the"
        "\npage faults of the fresh output maps). best s / cpu s: wall and process CPU time of"
        "\nthe fastest run; Mvox/s = mask voxels / best wall time (cpu Mvox/s: / its CPU time)."
        f"\nload average {load:.2f} on {os.cpu_count()} cores (wall > cpu means competition)"
        f"\nprocess peak RSS {rss_mb:.0f} MiB (phantom, inputs and all fits included)"
    )
    print(f"total {time.perf_counter() - t_start:.1f} s")
    for failure in failures:
        print(f"BELOW TARGET: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
