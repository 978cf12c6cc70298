"""``bids-agquant`` entry point: parse → check inputs → plan → build → run → exit code.

Exit codes (DESIGN.md §7): 0 ok; 1 a node failed or unspecified error; 16 BIDS validation
failed; 64 usage; 65 bad data; 66 required input missing; 73 cannot create output.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from datetime import datetime
from pathlib import Path

from .. import __version__
from ..config import RunConfig
from ..derivatives import (
    PLAN_FILE,
    RUN_CONFIG_FILE,
    run_log_dir,
    write_derivative_description,
)
from ..errors import EX_CANTCREAT, EX_NOINPUT, EX_USAGE, InputError
from ..io import atomic_write_text, is_inside
from ..validation import validate_bids
from .parser import parse_args

LOGGER = logging.getLogger("bids_agquant")


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    # Nipype has its own handlers: stop its records from being printed twice via the root.
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False
    logging.getLogger("nipype.workflow").setLevel(logging.INFO if verbosity else logging.WARNING)
    logging.getLogger("nipype.interface").setLevel(logging.WARNING)
    logging.getLogger("bidsschematools").setLevel(logging.WARNING)


def _config_from_opts(opts) -> RunConfig:
    run_uuid = f"{datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"
    return RunConfig(
        bids_dir=opts.bids_dir.absolute(),
        output_dir=opts.output_dir.absolute(),
        analysis_level=opts.analysis_level,
        work_dir=opts.work_dir.absolute(),
        participant_label=list(opts.participant_label),
        session_label=list(opts.session_label),
        baseline_session=opts.baseline_session,
        contours_dir=opts.contours.absolute() if opts.contours else None,
        nprocs=opts.nprocs,
        omp_nthreads=opts.omp_nthreads,
        mem_gb=opts.mem_gb,
        plugin=opts.plugin,
        plugin_args=dict(opts.plugin_args),
        skip_bids_validation=opts.skip_bids_validation,
        random_seed=opts.random_seed,
        sloppy=opts.sloppy,
        agent=opts.agent,
        r1=opts.r1,
        gd_per_particle=opts.gd_per_particle,
        molar_mass=opts.molar_mass,
        measurable_threshold_mm=opts.measurable_threshold_mm,
        reference_dose_mg_per_kg=opts.reference_dose,
        vfa_fit=opts.vfa_fit,
        inversion_efficiency=opts.inversion_efficiency,
        b1_units=opts.b1_units,
        report_mass_max_mg_per_l=opts.report_mass_max,
        run_uuid=run_uuid,
    )


def check_paths(config: RunConfig) -> None:
    """Pre-flight checks on the input and output locations (raise InputError).

    The input dataset is never written to, so neither the output nor the work directory may
    lie inside it (not even under ``derivatives/``: a BIDS app that writes there changes the
    dataset it reads, and a read-only input mount would fail late). A work directory inside
    the output would put Nipype's cache into the derivatives dataset.
    """
    bids_dir = config.bids_dir
    if not bids_dir.is_dir():
        raise InputError(f"{bids_dir}: BIDS directory not found (inside a container, check the "
                         "bind mount)", EX_NOINPUT)
    from .workflow import participant_folder_hint

    if not (bids_dir / "dataset_description.json").exists():
        raise InputError(f"{bids_dir / 'dataset_description.json'}: missing; is this the root of "
                         f"a BIDS dataset?{participant_folder_hint(bids_dir)}", EX_NOINPUT)
    if config.analysis_level == "participant" and not any(
            p.is_dir() for p in bids_dir.glob("sub-*")):
        # Before the validator, whose file-by-file errors would hide what is wrong.
        raise InputError(f"{bids_dir}: no sub-* folders found"
                         f"{participant_folder_hint(bids_dir)}", EX_NOINPUT)
    checked = [("output_dir", config.output_dir)]
    if config.analysis_level == "participant":
        checked.append(("work_dir", config.work_dir))
    for name, path in checked:
        if is_inside(path, bids_dir):
            raise InputError(f"{path}: {name} must not be the input dataset or inside it "
                             f"({bids_dir}); the input is never written to", EX_USAGE)
    if config.analysis_level == "participant" and is_inside(config.work_dir, config.output_dir):
        raise InputError(f"{config.work_dir}: work_dir must not be inside output_dir "
                         f"({config.output_dir}); the Nipype cache is not a derivative",
                         EX_USAGE)
    for name, path in checked:
        existing = next((p for p in [path, *path.parents] if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise InputError(f"{path}: cannot create {name}: {existing} is a file",
                             EX_CANTCREAT)


def _prepare_outputs(config: RunConfig, plans) -> None:
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
        config.work_dir.mkdir(parents=True, exist_ok=True)
        write_derivative_description(config.output_dir, config.bids_dir,
                                     contours_dir=config.contours_dir)
        for plan in plans:
            subject_dir = config.output_dir / f"sub-{plan.subject}"
            # Temporary files of an interrupted run (atomic writes never completed them).
            for stale in subject_dir.rglob(".*.tmp") if subject_dir.is_dir() else []:
                stale.unlink(missing_ok=True)
            log_dir = run_log_dir(config.output_dir, plan.subject, config.run_uuid)
            log_dir.mkdir(parents=True, exist_ok=True)
            # Written once; the report and every later reader take the run's decisions
            # from these two files.
            atomic_write_text(log_dir / RUN_CONFIG_FILE, config.to_toml())
            atomic_write_text(log_dir / PLAN_FILE, plan.to_json())
    except OSError as exc:
        raise InputError(f"cannot create output: {exc}", EX_CANTCREAT) from None


def _crashed(config: RunConfig, plan) -> list[Path]:
    log_dir = run_log_dir(config.output_dir, plan.subject, config.run_uuid)
    return sorted(log_dir.glob("crash-*")) if log_dir.is_dir() else []


def _write_report(config: RunConfig, plan) -> bool:
    """The participant's HTML report; False (and an error logged) if it could not be made."""
    try:
        from ..reports import write_participant_report

        path = write_participant_report(config.output_dir, plan.subject, config.run_uuid)
    except Exception:  # a report must never hide the run's own outcome
        LOGGER.exception("sub-%s: the HTML report could not be written", plan.subject)
        return False
    LOGGER.info("sub-%s: report %s", plan.subject, path)
    return True


def run_participant(config: RunConfig) -> int:
    """Plan, check, build and run the participant level; write the reports; return the exit
    code (DESIGN.md §7)."""
    from .workflow import build_workflow, plan_run

    plans, failures = plan_run(config)
    if not plans:  # nothing to run, nothing written
        return _summarise(config, [], failures, all_ok=True)
    _prepare_outputs(config, plans)
    workflow, plugin_args = build_workflow(config, plans)
    reports_ok, run_ok = True, True
    try:
        workflow.run(plugin=config.plugin, plugin_args=plugin_args)
    except RuntimeError as exc:
        LOGGER.error("some processing steps failed: %s", exc)
        run_ok = False
    finally:
        write_derivative_description(config.output_dir, config.bids_dir,
                                     contours_dir=config.contours_dir)
        if config.plugin != "SLURMGraph":
            reports_ok = all([_write_report(config, plan) for plan in plans])
    if config.plugin == "SLURMGraph" and run_ok:
        # SLURMGraph returns once every node is queued: nothing is finished yet.
        LOGGER.info("jobs queued for %s; outputs appear as they finish (squeue). Re-run the "
                    "same command with the default plugin afterwards: it reuses the cache and "
                    "writes the HTML reports", ", ".join(f"sub-{p.subject}" for p in plans))
        return _summarise(config, [], failures, all_ok=True)
    return _summarise(config, plans, failures, reports_ok and run_ok)


def _summarise(config: RunConfig, plans, failures: dict, all_ok: bool) -> int:
    """Say which participants failed and return the run's exit code."""
    crashed = {plan.subject: _crashed(config, plan) for plan in plans}
    crashed = {subject: files for subject, files in crashed.items() if files}
    done = [plan.subject for plan in plans if plan.subject not in crashed]
    if done:
        LOGGER.info("participant level done for %s: %s", ", ".join(f"sub-{s}" for s in done),
                    config.output_dir)
    for subject, files in crashed.items():
        LOGGER.error("sub-%s: %d processing step(s) failed; crash files: %s", subject,
                     len(files), ", ".join(str(f) for f in files))
    for subject, exc in failures.items():
        LOGGER.error("sub-%s: not processed (exit %d): %s", subject, exc.exit_code, exc)
    if failures or crashed:
        failed = sorted({*failures, *crashed})
        LOGGER.error("FAILED: %s", ", ".join(f"sub-{s}" for s in failed))
    if failures:
        return max(exc.exit_code for exc in failures.values())
    return 1 if crashed or not all_ok else 0


def run_group(config: RunConfig) -> int:
    from .group import write_group_outputs

    if not config.output_dir.is_dir():
        raise InputError(f"{config.output_dir}: no participant-level results to gather "
                         "(run the participant level first)", EX_NOINPUT)
    written = write_group_outputs(config.output_dir, config.bids_dir,
                                  participant_label=config.participant_label or None,
                                  reference_dose_mg_per_kg=config.reference_dose_mg_per_kg)
    for path in written:
        LOGGER.info("wrote %s", path)
    try:
        from ..reports import write_group_report

        LOGGER.info("wrote %s", write_group_report(config.output_dir, bids_dir=config.bids_dir))
    except Exception:  # the tables are written; say the report is missing and fail the run
        LOGGER.exception("the group HTML report could not be written")
        return 1
    return 0


def main(argv=None) -> int:
    """Console entry point; returns (and exits with) the BIDS-Apps exit code."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network at run time
    opts = parse_args(argv)
    _setup_logging(opts.verbose)
    config = _config_from_opts(opts)
    LOGGER.info("bids-agquant %s, %s level, run %s", __version__, config.analysis_level,
                config.run_uuid)
    try:
        check_paths(config)
        if config.analysis_level == "group":
            code = run_group(config)
        else:
            if not config.skip_bids_validation:
                validate_bids(config.bids_dir)
            code = run_participant(config)
    except InputError as exc:
        LOGGER.error("%s", exc)
        code = exc.exit_code
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
