"""Command-line arguments (BIDS-Apps positionals plus DESIGN.md §7 options)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_AGENT, DEFAULT_CONTOURS_SUBDIR, RunConfig
from ..errors import EX_USAGE
from ..qmri.b1 import B1_UNIT_CHOICES

#: Every default comes from RunConfig (one place); the parser only presents them.
_DEFAULTS = RunConfig()
PLUGINS = ("MultiProc", "Linear", "SLURM", "SLURMGraph")


class BIDSAppParser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; the BIDS-Apps spec reserves 2, so use 64."""

    def error(self, message):
        self.print_usage()
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def bids_label(prefix: str):
    """A BIDS label, prefix optional; only letters and digits (no path traversal)."""
    def strip(value: str) -> str:
        label = value.removeprefix(prefix)
        if not re.fullmatch(r"[A-Za-z0-9]+", label):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a BIDS label (letters and digits only, e.g. {prefix}01)")
        return label
    return strip


def _plugin_args(value: str) -> dict:
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--plugin-args must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("--plugin-args must be a JSON object")
    return data


def _efficiency(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {number}")
    return number


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = BIDSAppParser(
        prog="bids-agquant",
        description="Gadolinium nanoparticle uptake maps and per-lesion statistics from a BIDS "
                    "trial dataset (VFA or MP2RAGE T1 mapping, ANTs registration, "
                    "ΔR1 → mM Gd → mg/L).",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the raw BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="where the BIDS-Derivatives output goes (the same for the "
                             "participant and group levels)")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: maps and lesion tables (participants may run in "
                             "parallel into the same output_dir); group: trial-wide tables")
    parser.add_argument("--version", action="version", version=f"bids-agquant {__version__}")

    sel = parser.add_argument_group("what to process")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                     type=bids_label("sub-"), metavar="LABEL",
                     help="participants to process (default: all); 'sub-' is optional")
    sel.add_argument("--session-label", "--session_label", nargs="+", default=[],
                     type=bids_label("ses-"), metavar="LABEL",
                     help="post-agent sessions to process (the baseline is always used)")
    sel.add_argument("--baseline-session", type=bids_label("ses-"),
                     default=_DEFAULTS.baseline_session,
                     help="label of the pre-agent baseline session (default: "
                          f"{_DEFAULTS.baseline_session}); never inferred by sorting labels")
    sel.add_argument("--contours", type=Path, default=None, metavar="DIR",
                     help="derivatives dataset with the GTV contours "
                          f"(default: BIDS_DIR/{DEFAULT_CONTOURS_SUBDIR.as_posix()})")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                     help="do not run bids-validator-deno on the input")

    sci = parser.add_argument_group("contrast agent")
    sci.add_argument("--agent", default=_DEFAULTS.agent,
                     help="agent preset (aguix-nanorad, aguix-mp2rage, gadoterate, gadobutrol) "
                          "for every participant; default: participants.tsv 'agent', else "
                          f"{DEFAULT_AGENT}")
    sci.add_argument("--r1", type=float, default=_DEFAULTS.r1, metavar="PER_MM_PER_S",
                     help="relaxivity per Gd ion, 1/(mM s); overrides the preset")
    sci.add_argument("--gd-per-particle", type=float, default=_DEFAULTS.gd_per_particle,
                     help="Gd ions per particle/molecule; overrides the preset")
    sci.add_argument("--molar-mass", type=float, default=_DEFAULTS.molar_mass,
                     metavar="G_PER_MOL",
                     help="particle/molecule molar mass, g/mol; overrides the preset")
    sci.add_argument("--reference-dose", type=float,
                     default=_DEFAULTS.reference_dose_mg_per_kg, metavar="MG_PER_KG",
                     help="group level: dose (mg/kg) that signal enhancement is normalised to")
    sci.add_argument("--measurable-threshold-mm", type=float,
                     default=_DEFAULTS.measurable_threshold_mm,
                     help="longest diameter (mm) at or above which a lesion is measurable")

    t1 = parser.add_argument_group("T1 mapping")
    t1.add_argument("--vfa-fit", choices=["linear", "wlls", "nlls"], default=_DEFAULTS.vfa_fit,
                    help="VFA fit: linear DESPOT1 (default), weighted linear, or nonlinear least "
                         "squares on the signal equation (more precise with noise, slower)")
    t1.add_argument("--inversion-efficiency", type=_efficiency,
                    default=_DEFAULTS.inversion_efficiency, metavar="EFF",
                    help="MP2RAGE inversion efficiency in (0, 1]; default: the sidecar's "
                         "InversionEfficiency, else 0.96 (Siemens adiabatic pulse, Marques 2010)")
    t1.add_argument("--b1-units", choices=list(B1_UNIT_CHOICES), default=_DEFAULTS.b1_units,
                    help="units of the given B1+ maps (fmap/*_TB1map), overriding their sidecar "
                         "Units and the guess from the values: a fraction of nominal, percent, "
                         "10 x the achieved flip angle in degrees (divided by 10 x the sidecar "
                         "FlipAngle; Siemens tfl_b1map famp), or per mille (SA2RAGE exports)")

    rep = parser.add_argument_group("reports")
    rep.add_argument("--report-mass-max", type=_positive,
                     default=_DEFAULTS.report_mass_max_mg_per_l, metavar="MG_PER_L",
                     help="upper end of the fixed colour scale of the concentration maps in the "
                          "HTML reports, mg/L of agent (default 300 = 0.3 mg/ml)")

    perf = parser.add_argument_group("performance and reproducibility")
    perf.add_argument("-w", "--work-dir", type=Path, default=_DEFAULTS.work_dir,
                      help="Nipype working directory; re-using it resumes a run "
                           f"(default: ./{_DEFAULTS.work_dir})")
    perf.add_argument("--nprocs", "--n-cpus", type=int, default=_DEFAULTS.nprocs,
                      help="processes Nipype may run at once (default: all cores)")
    perf.add_argument("--omp-nthreads", type=int, default=_DEFAULTS.omp_nthreads,
                      help="threads per registration (default 1: bit-reproducible ANTs)")
    perf.add_argument("--mem-gb", type=float, default=_DEFAULTS.mem_gb,
                      help="memory budget for Nipype")
    perf.add_argument("--plugin", default=_DEFAULTS.plugin, choices=PLUGINS,
                      help="Nipype execution plugin: MultiProc (default, local processes), "
                           "Linear (one node at a time), SLURM (one batch job per node, this "
                           "process waits), SLURMGraph (the whole graph submitted at once with "
                           "afterok dependencies; this process returns when it is queued)")
    perf.add_argument("--plugin-args", type=_plugin_args, default={},
                      help="JSON object of plugin arguments")
    perf.add_argument("--random-seed", type=int, default=_DEFAULTS.random_seed,
                      help=f"ANTs random seed (default {_DEFAULTS.random_seed})")
    perf.add_argument("--sloppy", action="store_true",
                      help="fast, low-accuracy registration (testing only)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    opts = build_parser().parse_args(argv)
    if opts.nprocs < 1 or opts.omp_nthreads < 1:
        build_parser().error("--nprocs and --omp-nthreads must be at least 1")
    return opts
