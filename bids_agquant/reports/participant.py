"""The participant report ``sub-<id>.html``, assembled from what the run recorded and wrote.

Inputs: the run's log folder ``sub-<id>/log/<run_uuid>/`` — the plan it used (``plan.json``,
:class:`~bids_agquant.plan.ParticipantPlan`), its configuration (``bids_agquant.toml``,
:class:`~bids_agquant.config.RunConfig`) and Nipype ``crash-*.txt`` files — and the
derivatives named by the output contract (:func:`~bids_agquant.derivatives.expected_outputs`):
maps, sidecars (registration parameters and ``RegistrationQuality`` included), lesion /
control / profile / persistence tables. The raw images the plan names are read for the
"before registration" and contour views, and participants.tsv for the participant's row;
nothing is searched for. Nothing is recomputed that the pipeline wrote, and anything missing
(a failed timepoint) is shown as missing: the report never needs a complete run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from ..config import RunConfig
from ..derivatives import PLAN_FILE, RUN_CONFIG_FILE, expected_outputs, run_log_dir
from ..io import atomic_write_text
from ..plan import ParticipantPlan, Timepoint
from ..qc import HIGH_NEGATIVE_FRACTION, POOR_REGISTRATION_CORRELATION, rigid_motion
from . import figures
from .core import (
    fmt,
    package_versions,
    parse_crash_file,
    read_json,
    read_tsv,
    read_tsv_text,
    render,
    slug,
)

LOGGER = logging.getLogger("bids_agquant")

#: Volumes kept in memory while a report is drawn (the baseline T1w and the maps of one
#: timepoint; about 4 MB each at 2 mm, 64 MB at 1 mm).
IMAGE_CACHE_SIZE = 8

#: Sidecar keys of the concentration maps that record the agent constants.
AGENT_KEYS = ("ContrastAgent", "ContrastAgentPreset", "Relaxivity", "RelaxivityFieldStrength",
              "GdPerParticle", "ParticleMolarMass", "MassPerMillimolarGd")

METHOD_NAMES = {"vfa": "VFA (variable flip angle, DESPOT1)", "mp2rage": "MP2RAGE"}

#: Lesion-table columns shown (when present): column, header, unit.
LESION_COLUMNS = (
    ("lesion_id", "lesion", ""),
    ("lesion_name", "name", ""),
    ("volume_ml", "volume", "mL"),
    ("equiv_diameter_mm", "equiv. diam.", "mm"),
    ("longest_diameter_mm", "longest diam.", "mm"),
    ("measurable", "measurable", ""),
    ("gd_mM_mean", "Gd mean", "mM"),
    ("gd_mM_sd", "Gd SD", "mM"),
    ("gd_mM_median", "Gd median", "mM"),
    ("gd_mM_p25", "Gd p25", "mM"),
    ("gd_mM_p75", "Gd p75", "mM"),
    ("mass_mg_per_L_mean", "agent mean", "mg/L"),
    ("mass_mg_per_L_uqmean", "agent UQ mean", "mg/L"),
    ("deltaR1_mean", "ΔR1 mean", "1/s"),
    ("deltaR1_loq", "ΔR1 LoQ", "1/s"),
    ("gd_mM_loq", "Gd LoQ", "mM"),
    ("quantification", "quantification", ""),
    ("negative_fraction", "negative fraction", ""),
    ("t1_baseline_s_mean", "T1 baseline", "s"),
    ("t1_post_s_mean", "T1 post", "s"),
    ("se_percent_mean", "SE mean", "%"),
    ("peak_to_valley_ratio", "peak/valley", ""),
    ("percent_injected_dose_per_g", "%ID/g", "%/g"),
)
CONTROL_COLUMNS = (
    ("roi_id", "control region", ""),
    ("n_voxels", "voxels", ""),
    ("deltaR1_mean", "ΔR1 mean", "1/s"),
    ("deltaR1_loq", "ΔR1 LoQ", "1/s"),
    ("gd_mM_mean", "Gd mean", "mM"),
    ("negative_fraction", "negative fraction", ""),
    ("se_percent_mean", "SE mean", "%"),
    ("control_failed", "failed", ""),
)
PERSISTENCE_COLUMNS = (
    ("lesion_id", "lesion", ""),
    ("early_timepoint", "early", ""),
    ("late_timepoint", "late", ""),
    ("se_percent_mean_ratio", "SE late/early", ""),
    ("gd_mM_mean_early", "Gd early", "mM"),
    ("gd_mM_mean_late", "Gd late", "mM"),
    ("gd_mM_mean_ratio", "Gd late/early", ""),
    ("late_quantification", "late quantification", ""),
)


def _float_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def participant_row(bids_dir: Path | None, subject: str) -> dict[str, str]:
    """The participant's participants.tsv row (text values, ``n/a`` kept)."""
    if not bids_dir:
        return {}
    table = read_tsv_text(Path(bids_dir) / "participants.tsv")
    if table is None or "participant_id" not in table:
        return {}
    rows = table[table["participant_id"] == f"sub-{subject}"]
    return {} if rows.empty else {k: str(v) for k, v in rows.iloc[0].items()}


# --------------------------------------------------------------------------- the report
class ParticipantReport:
    """Collects what a participant's report shows; :meth:`context` feeds the template."""

    def __init__(self, output_dir: Path, subject: str, run_uuid: str, *,
                 bids_dir: Path | None = None):
        self.output_dir = Path(output_dir)
        self.subject = subject.removeprefix("sub-")
        self.run_uuid = run_uuid
        self.log_dir = run_log_dir(self.output_dir, self.subject, run_uuid)
        self.warnings: list[dict] = []
        self.report_errors: list[dict] = []
        self._images: OrderedDict[Path, tuple | None] = OrderedDict()
        self._masks: dict[str, np.ndarray] = {}
        run_config = self._read_config()
        self.config = dataclasses.asdict(run_config) if run_config else {}
        defaults = run_config or RunConfig()
        self.bids_dir = Path(bids_dir) if bids_dir else (
            Path(run_config.bids_dir) if run_config else None)
        self.vmax = float(defaults.report_mass_max_mg_per_l)
        self.plan = self._read_plan()
        self.timepoints = self.plan.timepoints if self.plan else []
        self.baseline = self.plan.baseline if self.plan else None
        self.reference = self.plan.reference_label if self.plan else "T1w"
        self.outputs = ({o.key: o for o in expected_outputs(self.plan, defaults)}
                        if self.plan else {})

    # ------------------------------------------------------------------ plumbing
    def _read_config(self) -> RunConfig | None:
        path = self.log_dir / RUN_CONFIG_FILE
        try:
            return RunConfig.from_toml(path.read_text())
        except (OSError, ValueError, TypeError) as exc:
            self.warn(None, f"run configuration {path.name} not readable in "
                            f"sub-{self.subject}/log/{self.run_uuid}/ ({exc.__class__.__name__}); "
                            "run parameters are not shown")
            return None

    def _read_plan(self) -> ParticipantPlan | None:
        path = self.log_dir / PLAN_FILE
        try:
            return ParticipantPlan.from_json(path.read_text())
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.warn(None, f"the run's plan {path.name} is not readable in "
                            f"sub-{self.subject}/log/{self.run_uuid}/ ({exc.__class__.__name__}): "
                            "the report cannot say what the run did", level="error")
            return None

    def warn(self, tp: Timepoint | None, text: str, level: str = "warning",
             anchor: str | None = None):
        self.warnings.append({"level": level, "where": tp.label if tp else "participant",
                              "anchor": anchor or (f"tp-{slug(tp.label)}" if tp else "summary"),
                              "text": text})

    def is_baseline(self, tp: Timepoint) -> bool:
        return self.plan is not None and self.plan.is_baseline(tp)

    def out(self, kind: str, tp: Timepoint | None, method: str | None = None) -> Path | None:
        """Path of the ``kind`` output of ``tp`` in the output contract, or None when the run
        did not plan it."""
        output = self.outputs.get((kind, tp.label, method)) if tp is not None else None
        return self.output_dir / output.relpath if output else None

    @staticmethod
    def sidecar(path: Path | None) -> Path | None:
        """The JSON sidecar of a derivative (or None)."""
        if path is None:
            return None
        return path.with_name(re.sub(r"(\.nii\.gz|\.nii|\.tsv|\.mat)$", ".json", path.name))

    def rel(self, path: Path | None) -> str:
        """``path`` relative to the output (or raw) dataset, for display."""
        if path is None:
            return "n/a"
        try:
            return Path(path).relative_to(self.output_dir).as_posix()
        except ValueError:
            try:
                return Path(path).relative_to(self.bids_dir).as_posix() if self.bids_dir \
                    else Path(path).name
            except ValueError:
                return Path(path).name

    def image(self, path: Path | None):
        """``(nibabel image, float32 data)`` or None when absent or unreadable (cached)."""
        if path is None:
            return None
        path = Path(path)
        if path in self._images:
            self._images.move_to_end(path)
            return self._images[path]
        try:
            img = nb.load(path)
            loaded = (img, np.asarray(img.dataobj, dtype=np.float32))
        except (OSError, ValueError, nb.filebasedimages.ImageFileError):
            loaded = None
        self._images[path] = loaded
        while len(self._images) > IMAGE_CACHE_SIZE:  # bounded memory at 1 mm
            self._images.popitem(last=False)
        return loaded

    def safe(self, what: str, func, *args, **kwargs):
        """Run a figure/table builder; a failure is listed in the report, not raised."""
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of a figure is reported
            LOGGER.warning("sub-%s report: %s failed: %s", self.subject, what, exc)
            self.report_errors.append({"what": what, "error": f"{type(exc).__name__}: {exc}"})
            return None

    # ------------------------------------------------------------------ geometry
    def largest_lesion_point(self, labels_path: Path | None):
        """World centroid (mm) of the largest label of a label image, or None."""
        loaded = self.image(labels_path)
        if loaded is None:
            return None
        img, data = loaded
        lab = np.rint(np.nan_to_num(data)).astype(np.int64)
        if not (lab > 0).any():
            return None
        counts = np.bincount(lab[lab > 0].ravel())
        ijk = np.argwhere(lab == int(np.argmax(counts))).mean(axis=0)
        return img.affine[:3, :3] @ ijk + img.affine[:3, 3]

    def lesion_points(self, labels_path: Path) -> dict[int, np.ndarray]:
        loaded = self.image(labels_path)
        if loaded is None:
            return {}
        img, data = loaded
        lab = np.rint(np.nan_to_num(data)).astype(np.int64)
        ids = np.unique(lab[lab > 0])
        if ids.size == 0:
            return {}
        from scipy import ndimage

        centres = ndimage.center_of_mass(np.ones(lab.shape), lab, ids)
        return {int(i): img.affine[:3, :3] @ np.asarray(c) + img.affine[:3, 3]
                for i, c in zip(ids, centres, strict=True)}

    def head_point(self, img, data) -> np.ndarray:
        mask = self.head_mask(img, data)
        ijk = np.argwhere(mask).mean(axis=0) if mask.any() else (np.asarray(data.shape) - 1) / 2
        return img.affine[:3, :3] @ ijk + img.affine[:3, 3]

    def head_mask(self, img, data) -> np.ndarray:
        """Signal (head) mask of an image, as the pipeline's registration mask."""
        from ..qmri.masks import signal_mask

        key = str(img.get_filename())
        if key not in self._masks:
            self._masks = {key: signal_mask(data)}  # one at a time: the baseline T1w
        return self._masks[key]

    # ------------------------------------------------------------------ sections
    def inputs_rows(self) -> list[dict]:
        rows = []
        for tp in self.timepoints:
            rows.append({
                "label": tp.label, "anchor": f"tp-{slug(tp.label)}",
                "role": "baseline (reference space)" if self.is_baseline(tp) else "post-agent",
                "hours": tp.hours_post_injection,
                "t1w": [tp.t1w.name] if tp.t1w else [],
                "vfa": [f.name for f in tp.vfa.files] if tp.vfa else [],
                "mp2rage": [f.name for f in tp.mp2rage.files] if tp.mp2rage else [],
                "b1": ([f"{f.name} ({tp.b1.suffix})" for f in tp.b1.files]
                       + tp.b1.checks) if tp.b1 else [],
            })
        return rows

    def _map_sidecar(self, tp, method) -> dict:
        return read_json(self.sidecar(self.out("T1map", tp, method))) or {}

    def _agent_sidecar(self, tp, method) -> dict:
        for suffix in ("massconc", "Gdconc"):
            meta = read_json(self.sidecar(self.out(suffix, tp, method)))
            if meta:
                return meta
        return {}

    @staticmethod
    def mg_per_mM(meta: dict) -> float | None:
        value = _float_or_none(meta.get("MassPerMillimolarGd"))
        if value is None:
            mass, n_gd = (_float_or_none(meta.get("ParticleMolarMass")),
                          _float_or_none(meta.get("GdPerParticle")))
            value = mass / n_gd if mass and n_gd else None
        return value

    def parameter_table(self) -> dict:
        """Every parameter that changes a number, per timepoint and T1 method (from the
        sidecars of the maps the run wrote)."""
        rows_spec = [
            ("T1 method", None),
            ("fit / look-up", "EstimationAlgorithm"),
            ("flip angles (deg)", "FlipAngle"),
            ("TR excitation (s)", "RepetitionTimeExcitation"),
            ("MP2RAGE TR preparation (s)", "RepetitionTimePreparation"),
            ("MP2RAGE inversion times (s)", "InversionTimes"),
            ("MP2RAGE shots [before, after]", "NumberShots"),
            ("inversion efficiency", "InversionEfficiency"),
            ("MP2RAGE UNI source", "UNISource"),
            ("B1+ correction", "B1Correction"),
            ("agent preset", "ContrastAgentPreset"),
            ("r1 (1/(mM s), per Gd)", "Relaxivity"),
            ("r1 field strength (T)", "RelaxivityFieldStrength"),
            ("Gd per particle", "GdPerParticle"),
            ("molar mass (g/mol)", "ParticleMolarMass"),
            ("mg/L per mM Gd", "MassPerMillimolarGd"),
            ("hours post injection", None),
        ]
        columns, values = [], []
        for tp in self.timepoints:
            for method in tp.methods:
                meta = self._map_sidecar(tp, method)
                if not self.is_baseline(tp):
                    meta.update({k: v for k, v in self._agent_sidecar(tp, method).items()
                                 if k in AGENT_KEYS})
                columns.append({"label": f"{tp.label} · {method}",
                                "anchor": f"tp-{slug(tp.label)}"})
                col = []
                for name, key in rows_spec:
                    if name == "T1 method":
                        col.append(METHOD_NAMES.get(method, method))
                    elif name == "hours post injection":
                        col.append(fmt(tp.hours_post_injection) if not self.is_baseline(tp)
                                   else "baseline")
                    elif key in meta:
                        col.append(fmt(meta[key]))
                    elif key in AGENT_KEYS and self.is_baseline(tp):
                        col.append("—")
                    else:
                        col.append("n/a")
                values.append(col)
        rows = [{"name": name, "key": key or "", "values": [v[i] for v in values]}
                for i, (name, key) in enumerate(rows_spec)]
        # Rows that apply to no column (e.g. MP2RAGE timings in a VFA-only run) are dropped.
        rows = [r for r in rows if any(v not in ("n/a", "—") for v in r["values"])]
        return {"columns": columns, "rows": rows}

    def run_parameters(self) -> list[tuple[str, str]]:
        from ..lesions import CONTROL_SE_TOLERANCE_PERCENT, LOQ_K

        cfg = self.config
        reg_text = "n/a (no transform written)"
        reg = self.registration_parameters()
        if reg:
            reg_text = (f"{reg.get('type_of_transform')}, metric {reg.get('aff_metric')}, "
                        f"{reg.get('aff_sampling')} bins, iterations "
                        f"{reg.get('aff_iterations')}, shrink factors "
                        f"{reg.get('aff_shrink_factors')}, smoothing "
                        f"{reg.get('aff_smoothing_sigmas')} mm"
                        f"{' (sloppy)' if reg.get('sloppy') else ''}")
        rows = [
            ("run", self.run_uuid),
            ("baseline session", str(cfg.get("baseline_session", "n/a"))),
            ("VFA fit", str(cfg.get("vfa_fit", "n/a"))),
            ("agent (command line)", str(cfg.get("agent") or "from participants.tsv")),
            ("r1 override (1/(mM s))", fmt(cfg.get("r1"))),
            ("Gd per particle override", fmt(cfg.get("gd_per_particle"))),
            ("molar mass override (g/mol)", fmt(cfg.get("molar_mass"))),
            ("inversion efficiency override", fmt(cfg.get("inversion_efficiency"))),
            ("measurable lesion: longest diameter ≥ (mm)",
             fmt(cfg.get("measurable_threshold_mm"))),
            ("limit of quantification (LoQ)",
             f"{LOQ_K:g} × robust SD (1.4826 MAD) of normal-tissue region means of the "
             "lesion's size (ICH Q2); a lesion mean |ΔR1| below it is '<LoQ'"),
            ("healthy-tissue control fails when",
             f"|ΔR1 mean| > its LoQ or |SE mean| > {CONTROL_SE_TOLERANCE_PERCENT:g} %"),
            ("registration", reg_text + "; lesions masked out of the metric"),
            ("random seed", fmt(cfg.get("random_seed"))),
            ("poor-registration warning", f"correlation < {POOR_REGISTRATION_CORRELATION:g}"),
            ("high negative fraction warning", f"> {HIGH_NEGATIVE_FRACTION:g}"),
            ("concentration display scale", f"0–{self.vmax:g} mg/L (fixed)"),
            ("threads / processes", f"{fmt(cfg.get('omp_nthreads'))} / {fmt(cfg.get('nprocs'))}"),
        ]
        return rows

    def registration_parameters(self) -> dict:
        """The antspyx parameters the run used, from the sidecar of the first transform to
        the reference written (``RegistrationParameters``), else of a method → T1w one."""
        kinds = [("xfm_session", tp, None) for tp in self.timepoints] + [
            ("xfm_method", tp, m) for tp in self.timepoints for m in tp.methods]
        for kind, tp, method in kinds:
            meta = read_json(self.sidecar(self.out(kind, tp, method))) or {}
            if isinstance(meta.get("RegistrationParameters"), dict):
                return meta["RegistrationParameters"]
        return {}

    def uptake_methods(self, tp: Timepoint) -> list[str]:
        return self.plan.methods_for(tp) if self.plan else []

    def expected_outputs(self, tp: Timepoint) -> list[Path]:
        """The outputs the contract lists for ``tp``."""
        return [self.output_dir / o.relpath for o in self.outputs.values()
                if o.timepoint == tp.label]

    # ------------------------------------------------------------------ figures
    def base_t1w(self):
        return self.image(self.baseline.t1w) if self.baseline else None

    def reference_point(self):
        point = self.largest_lesion_point(self.out("dseg", self.baseline))
        if point is None:
            base = self.base_t1w()
            if base is None:
                return None
            point = self.head_point(*base)
        return point

    def registration_section(self, tp: Timepoint) -> dict:
        registered_path = self.out("preproc_T1w", tp)
        sidecar = read_json(self.sidecar(registered_path)) or {}
        quality = sidecar.get("RegistrationQuality") or {}
        section = {"quality": quality, "figure": None, "motion": None, "poor": False,
                   "registered": self.rel(registered_path)}
        xfm = self.out("xfm_session", tp)
        if xfm is not None and xfm.exists():
            section["motion"] = self.safe(f"{tp.label} transform", _read_motion, xfm)
        corr = _float_or_none(quality.get("Correlation"))
        if corr is None:
            if registered_path is not None and registered_path.exists():
                self.warn(tp, "registration quality not recorded (no RegistrationQuality in "
                              f"{registered_path.name.replace('.nii.gz', '.json')})",
                          anchor=f"reg-{slug(tp.label)}")
        elif corr < POOR_REGISTRATION_CORRELATION:
            section["poor"] = True
            self.warn(tp, f"poor registration: correlation with the baseline T1w {corr:.3f} "
                          f"< {POOR_REGISTRATION_CORRELATION:g}; check the checkerboard",
                      anchor=f"reg-{slug(tp.label)}")
        base = self.base_t1w()
        registered = self.image(registered_path)
        if base is None or registered is None:
            return section
        point = self.reference_point()
        planes = figures.Planes(base[0], point)
        labels_path = self.out("dseg_ref", tp)
        if labels_path is None or not labels_path.exists():
            labels_path = self.out("dseg", self.baseline)
        labels = self.image(labels_path)
        raw = self.image(tp.t1w)
        section["figure"] = figures.registration_figure(
            planes,
            baseline=planes.sample(*base),
            registered=planes.sample(*registered),
            before=planes.sample(*raw) if raw is not None else None,
            head=planes.sample(base[0], self.head_mask(*base).astype(np.float32), order=0),
            lesions=planes.sample(*labels, order=0) if labels is not None else None,
            session=tp.label, reference=self.baseline.label)
        return section

    def contours_figure(self, tp: Timepoint) -> str | None:
        anatomy = self.image(tp.t1w)
        if anatomy is None:
            return None
        labels_path = self.out("dseg", tp)
        labels = self.image(labels_path)
        point = self.largest_lesion_point(labels_path) if labels is not None else None
        if point is None:
            point = self.reference_point()
        if point is None:
            point = self.head_point(*anatomy)
        planes = figures.Planes(anatomy[0], point)
        contours = (f"the GTV contours {labels_path.name}" if labels is not None
                    else "no GTV contours (none written)")
        title = f"{tp.t1w.name} with {contours}"
        return figures.contours_figure(
            planes, anatomy=planes.sample(*anatomy),
            lesions=planes.sample(*labels, order=0) if labels is not None else None, title=title)

    def maps_figure(self, tp: Timepoint, method: str) -> str | None:
        t1_path = self.out("T1map", tp, method)
        r1_path = self.out("R1map", tp, method)
        t1, r1 = self.image(t1_path), self.image(r1_path)
        grid = t1 or r1
        if grid is None:
            return None
        labels_path = self.out("dseg", tp)
        labels = self.image(labels_path)
        point = self.largest_lesion_point(labels_path) if labels is not None else None
        if point is None:
            point = self.reference_point()
        if point is None:
            point = self.head_point(*grid)
        planes = figures.Planes(grid[0], point)
        return figures.maps_figure(
            planes, t1=planes.sample(*t1) if t1 else None, r1=planes.sample(*r1) if r1 else None,
            lesions=planes.sample(*labels, order=0) if labels is not None else None,
            title=f"{method} T1 and R1 maps, native space of {tp.label} "
                  "(white: GTV contours of this session)")

    def concentration_figures(self, tp, method, mg_per_mM, lesions: pd.DataFrame | None):
        mass_path = self.out("massconc", tp, method)
        mass = self.image(mass_path)
        base = self.base_t1w()
        if mass is None or base is None:
            return None, None
        labels_path = self.out("dseg_ref", tp)
        labels = self.image(labels_path)
        point = self.reference_point()
        planes = figures.Planes(base[0], point)
        overview = figures.concentration_overview(
            planes, anatomy=planes.sample(*base), mass=planes.sample(*mass),
            lesions=planes.sample(*labels, order=0) if labels is not None else None,
            vmax=self.vmax, mg_per_mM=mg_per_mM,
            title=f"{method} agent concentration, {tp.label}, on the baseline T1w; fixed "
                  f"scale 0–{self.vmax:g} mg/L, opacity rises with |value|, blue < 0")
        crops = []
        if labels is not None:
            names = _lesion_names(lesions)
            longest = ({} if lesions is None or "longest_diameter_mm" not in lesions else
                       dict(zip(lesions["lesion_id"].astype(int),
                                lesions["longest_diameter_mm"], strict=True)))
            for lesion_id, centre in sorted(self.lesion_points(labels_path).items())[
                    :figures.MAX_LESION_PANELS]:
                half = max(figures.CROP_HALF_MM, float(longest.get(lesion_id, 0) or 0))
                crop = figures.Planes(base[0], centre, views=("axial",), crop_mm=half)
                crops.append((lesion_id, names.get(lesion_id, f"GTV {lesion_id}"), crop,
                              crop.sample(*base), crop.sample(*mass),
                              crop.sample(*labels, order=0)))
        per_lesion = None
        if crops:
            per_lesion = figures.concentration_lesions(
                crops, vmax=self.vmax, mg_per_mM=mg_per_mM,
                title=f"{method}, {tp.label}: axial slice through each lesion centroid")
        return overview, per_lesion

    def histogram_svg(self, tp, method, lesions: pd.DataFrame, mg_per_mM, prefix):
        mass = self.image(self.out("massconc", tp, method))
        labels = self.image(self.out("dseg_ref", tp))
        if mass is None or labels is None or lesions is None:
            return None
        lab = np.rint(np.nan_to_num(labels[1])).astype(np.int64)
        names = _lesion_names(lesions)
        panels = []
        for _, row in lesions.head(figures.MAX_LESION_PANELS).iterrows():
            lesion_id = int(row["lesion_id"])
            loq_mM = _float_or_none(row.get("gd_mM_loq"))
            panels.append((lesion_id, names.get(lesion_id, f"GTV {lesion_id}"),
                           mass[1][lab == lesion_id],
                           {"mean": _nan(row.get("mass_mg_per_L_mean")),
                            "median": _nan(row.get("mass_mg_per_L_median")),
                            "loq": (loq_mM * mg_per_mM if loq_mM is not None and mg_per_mM
                                    else np.nan),
                            "negative_fraction": _nan(row.get("negative_fraction"))}))
        return figures.histogram_figure(
            panels, mg_per_mM=mg_per_mM, prefix=prefix,
            title=f"{method}, {tp.label}: voxel agent concentration per lesion "
                  "(red band: ± the LoQ of the lesion mean)")

    # ------------------------------------------------------------------ tables
    def table(self, path: Path, columns, key: str, flag) -> dict | None:
        """Rows of a TSV for the template: exact TSV text in ``data-value``, rounded text
        shown; ``flag(row)`` gives the CSS class of a row ('' = none)."""
        text = read_tsv_text(path)
        numbers = read_tsv(path)
        if text is None or numbers is None:
            return None
        dictionary = read_json(Path(str(path)[:-4] + ".json")) or {}
        shown = [(c, h, u) for c, h, u in columns if c in text.columns]
        head = [{"column": c, "header": h, "unit": u,
                 "title": (dictionary.get(c) or {}).get("Description", "")} for c, h, u in shown]
        rows = []
        for i in range(len(text)):
            cells = []
            for column, _, _ in shown:
                raw = text.iloc[i][column]
                value = numbers.iloc[i][column]
                cells.append({"column": column, "raw": raw,
                              "text": fmt(value) if raw not in ("n/a", "") else "n/a"})
            rows.append({"key": text.iloc[i][key] if key in text.columns else str(i),
                         "cells": cells, "class": flag(numbers.iloc[i])})
        return {"head": head, "rows": rows, "file": self.rel(path),
                "all_columns": list(text.columns)}

    def method_section(self, tp: Timepoint, method: str) -> dict:
        anchor = f"{slug(tp.label)}-{method}"
        section = {"method": method, "name": METHOD_NAMES.get(method, method), "anchor": anchor,
                   "maps": None, "agent": {}, "mg_per_mM": None, "conc_overview": None,
                   "conc_lesions": None, "histogram": None, "profiles": None,
                   "controls": None, "persistence": None}
        section["maps"] = self.safe(f"{tp.label} {method} T1/R1 maps", self.maps_figure, tp,
                                    method)
        if self.is_baseline(tp) or method not in self.uptake_methods(tp):
            return section
        section["uptake"] = True
        agent = self._agent_sidecar(tp, method)
        mg_per_mM = self.mg_per_mM(agent)
        section["agent"] = agent
        section["mg_per_mM"] = mg_per_mM
        lesions_path = self.out("lesions", tp, method)
        lesions = read_tsv(lesions_path)
        overview_and_crops = self.safe(f"{tp.label} {method} concentration maps",
                                       self.concentration_figures, tp, method, mg_per_mM,
                                       lesions)
        section["conc_overview"], section["conc_lesions"] = overview_and_crops or (None, None)

        def lesion_flag(row):
            classes = []
            if str(row.get("quantification")) == "<LoQ":
                classes.append("below-loq")
            if _nan(row.get("negative_fraction")) > HIGH_NEGATIVE_FRACTION:
                classes.append("high-negative")
            return " ".join(classes)

        section["lesions"] = self.table(lesions_path, LESION_COLUMNS, "lesion_id", lesion_flag)
        if lesions is not None:
            names = _lesion_names(lesions)
            for _, row in lesions.iterrows():
                lid = int(row["lesion_id"])
                who = f"{method} lesion {lid} ({names.get(lid, '')})"
                if str(row.get("quantification")) == "<LoQ":
                    self.warn(tp, f"{who}: mean ΔR1 {fmt(row.get('deltaR1_mean'))} 1/s is below "
                                  f"the limit of quantification {fmt(row.get('deltaR1_loq'))} "
                                  "1/s (<LoQ): its concentration is not a measurement",
                              anchor=anchor)
                neg = _nan(row.get("negative_fraction"))
                if neg > HIGH_NEGATIVE_FRACTION:
                    self.warn(tp, f"{who}: {neg:.0%} of its voxels have a negative "
                                  f"concentration (> {HIGH_NEGATIVE_FRACTION:.0%}): no "
                                  "measurable uptake, or misregistration", anchor=anchor)
            section["histogram"] = self.safe(f"{tp.label} {method} histograms",
                                             self.histogram_svg, tp, method, lesions, mg_per_mM,
                                             f"hist-{anchor}")
        profiles_path = self.out("profiles", tp, method)
        profiles = read_tsv(profiles_path)
        if profiles is not None and not profiles.empty:
            section["profiles"] = self.safe(
                f"{tp.label} {method} profiles", figures.profiles_figure, profiles,
                _lesion_names(lesions), prefix=f"prof-{anchor}",
                title=f"{method}, {tp.label}: line profiles of the agent concentration")
        controls_path = self.out("controls", tp, method)
        section["controls"] = self.table(
            controls_path, CONTROL_COLUMNS, "roi_id",
            lambda row: "failed" if str(row.get("control_failed")).lower() == "true" else "")
        controls = read_tsv(controls_path)
        if controls is not None and "control_failed" in controls:
            for _, row in controls.iterrows():
                if str(row["control_failed"]).lower() == "true":
                    self.warn(tp, f"{method} healthy-tissue control region {row['roi_id']} "
                                  f"failed: ΔR1 mean {fmt(row.get('deltaR1_mean'))} 1/s (LoQ "
                                  f"{fmt(row.get('deltaR1_loq'))}), SE mean "
                                  f"{fmt(row.get('se_percent_mean'))} %", anchor=anchor)
        persistence_path = self.out("persistence", tp, method)
        section["persistence"] = self.table(persistence_path, PERSISTENCE_COLUMNS, "lesion_id",
                                            lambda row: "")
        return section

    def b1_warnings(self, tp: Timepoint) -> None:
        """What the plan recorded about the timepoint's B1+: none for a VFA fit (with the
        size of the bias), a units guess, values that contradict the declared units."""
        from ..preflight import NO_B1_WARNING

        if tp.b1 is None:
            if tp.vfa is not None:
                self.warn(tp, NO_B1_WARNING)
            return
        if tp.b1.decision.startswith("WARNING"):
            self.warn(tp, f"B1+ map {tp.b1.main_file.name}: {tp.b1.decision}")
        for text in tp.b1.warnings:
            self.warn(tp, f"B1+ map {tp.b1.main_file.name}: {text}")

    def timepoint_section(self, tp: Timepoint) -> dict:
        expected = self.expected_outputs(tp)
        missing = [self.rel(p) for p in expected if not p.exists()]
        section = {"label": tp.label, "anchor": f"tp-{slug(tp.label)}",
                   "is_baseline": self.is_baseline(tp), "hours": tp.hours_post_injection,
                   "missing": missing, "n_expected": len(expected)}
        if missing:
            self.warn(tp, f"{len(missing)} of {len(expected)} expected outputs missing "
                          "(see the timepoint's section; a processing step failed or was "
                          "skipped)", level="error")
        self.b1_warnings(tp)
        if not self.is_baseline(tp):
            section["registration"] = self.safe(f"{tp.label} registration check",
                                                self.registration_section, tp)
        section["contours"] = self.safe(f"{tp.label} contours", self.contours_figure, tp)
        section["methods"] = [self.method_section(tp, m) for m in tp.methods]
        return section

    # ------------------------------------------------------------------ errors, methods
    def crashes(self) -> list[dict]:
        """Crash files of this run, each attributed to its timepoint by the plan
        (:meth:`~bids_agquant.plan.ParticipantPlan.timepoint_for_node`)."""
        files = sorted(self.log_dir.glob("crash-*")) if self.log_dir.is_dir() else []
        out = []
        for path in files:
            entry = parse_crash_file(path) if path.suffix == ".txt" else {
                "file": path.name, "node": "?", "error": "binary crash file (pklz): open with "
                "nipypecli crash", "text": ""}
            entry["path"] = self.rel(path)
            # The step as named inside the participant's workflow (sub-workflow.node).
            node = entry["node"].split(f"sub_{self.subject}_wf.", 1)[-1]
            entry["step"] = node
            tp = self.plan.timepoint_for_node(entry["node"]) if self.plan else None
            entry["timepoint"] = tp.label if tp else None
            out.append(entry)
            self.warn(tp, f"node {node} crashed: {entry['error']}", level="error",
                      anchor="errors")
        return out

    def methods_text(self, versions: dict) -> list[str]:
        methods = sorted({m for tp in self.timepoints for m in tp.methods})
        agents = {}
        for tp in self.timepoints:
            if self.is_baseline(tp):
                continue
            for method in self.uptake_methods(tp):
                meta = self._agent_sidecar(tp, method)
                if meta:
                    agents[(meta.get("ContrastAgentPreset"), meta.get("Relaxivity"))] = meta
        paragraphs = [
            f"Results were produced by bids-agquant {versions['bids-agquant']} (Nipype "
            f"{versions['nipype']} [5], ANTs through antspyx {versions['antspyx']} [6], pybids "
            f"{versions['pybids']} [7], nibabel {versions['nibabel']}, NumPy "
            f"{versions['numpy']} and SciPy {versions['scipy']}) from a BIDS dataset [8]."]
        text = []
        if "vfa" in methods:
            text.append("T1 maps were estimated voxel-wise from variable-flip-angle spoiled "
                        "gradient-echo images with the DESPOT1 model [3], the nominal flip angle "
                        "scaled by the B1+ map when one was acquired, as in the NanoRad phase 1 "
                        "trial [1]")
        if "mp2rage" in methods:
            text.append("from MP2RAGE images by look-up of T1 in the MP2RAGE signal model "
                        "[4] (B1+ and inversion efficiency included), as in the NanoBrainMets "
                        "phase 2 trial [2]")
        if text:
            paragraphs.append("; ".join(text) + ". R1 = 1/T1.")
        paragraphs.append(
            "Each session's T1-weighted image was registered rigidly to the baseline T1w "
            "(ANTs, Mattes mutual information, lesions and a margin excluded from the metric, "
            "fixed seed) and the T1-mapping images to their session's T1w; R1 maps were "
            "resampled into the baseline space with a cubic B-spline. GTV contours were "
            "propagated to every session with label-preserving interpolation.")
        for meta in agents.values():
            paragraphs.append(
                f"The Gd concentration was C = ΔR1 / r1 with r1 = {fmt(meta.get('Relaxivity'))} "
                f"mM⁻¹ s⁻¹ per Gd at {fmt(meta.get('RelaxivityFieldStrength'))} T "
                f"({meta.get('ContrastAgent', '')}, preset {meta.get('ContrastAgentPreset', '')})"
                f" and the agent mass concentration C × M / n with M = "
                f"{fmt(meta.get('ParticleMolarMass'))} g/mol and n = "
                f"{fmt(meta.get('GdPerParticle'))} Gd per particle "
                f"({fmt(self.mg_per_mM(meta))} mg/L per mM Gd) [1, 2].")
        paragraphs.append(
            "Per-lesion statistics keep negative concentrations (noise, residual "
            "misregistration) and report their fraction; the limit of quantification of a "
            "lesion mean is 10 times the robust standard deviation of normal-tissue region "
            "means of the same size (ICH Q2 [9]); healthy-tissue spheres away from every "
            "lesion serve as negative controls [1]. Lesion size is the equivalent-sphere "
            "diameter and the longest diameter; line profiles through each centroid and "
            "concentration maps on a fixed 0–"
            f"{self.vmax:g} mg/L scale follow NanoBrainMets [2].")
        return paragraphs

    def context(self) -> dict:
        versions = package_versions()
        participant = participant_row(self.bids_dir, self.subject)
        crashes = self.crashes()
        sections = [self.timepoint_section(tp) for tp in self.timepoints]
        for section in sections:
            section["crashes"] = [c for c in crashes if c["timepoint"] == section["label"]]
        parameters = self.safe("parameter table", self.parameter_table) or {"columns": [],
                                                                            "rows": []}
        status = "errors" if crashes or any(w["level"] == "error" for w in self.warnings) \
            else ("warnings" if self.warnings else "ok")
        return {
            "subject": self.subject, "run_uuid": self.run_uuid,
            "generated": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "participant": participant, "inputs": self.inputs_rows(),
            "reference": self.baseline.label if self.baseline else "n/a",
            "parameters": parameters, "run_parameters": self.run_parameters(),
            "versions": versions, "timepoints": sections, "crashes": crashes,
            "report_errors": self.report_errors, "warnings": self.warnings,
            "methods": self.methods_text(versions), "status": status,
            "vmax": self.vmax, "log_dir": self.rel(self.log_dir),
            "thresholds": {"negative": HIGH_NEGATIVE_FRACTION,
                           "correlation": POOR_REGISTRATION_CORRELATION},
        }


def _nan(value) -> float:
    number = _float_or_none(value)
    return np.nan if number is None else number


def _lesion_names(lesions: pd.DataFrame | None) -> dict[int, str]:
    if lesions is None or "lesion_name" not in lesions:
        return {}
    return {int(i): str(n) for i, n in zip(lesions["lesion_id"], lesions["lesion_name"],
                                           strict=True) if pd.notna(n)}


def _read_motion(xfm: Path) -> dict:
    from scipy.io import loadmat

    content = loadmat(str(xfm))
    key = next(k for k in content if "Transform" in k)
    return rigid_motion(np.asarray(content[key]).ravel())


def write_participant_report(output_dir: Path, subject: str, run_uuid: str, *,
                             bids_dir: Path | None = None) -> Path:
    """Write ``output_dir/sub-<id>.html`` from what the run recorded and left on disk.

    Parameters
    ----------
    output_dir : Path
        The derivatives dataset (``sub-<id>/`` with the participant's outputs).
    subject : str
        Participant label (with or without ``sub-``).
    run_uuid : str
        The run whose ``sub-<id>/log/<run_uuid>/`` holds the plan, the configuration and
        the crash files.
    bids_dir : Path, optional
        The raw dataset (participants.tsv and the images the plan names); default: the
        run's ``bids_dir``.

    Returns
    -------
    Path
        The report (written atomically). Missing outputs and crashed nodes are shown in
        the report; a figure that cannot be drawn is listed in its errors section.
    """
    start = time.perf_counter()
    report = ParticipantReport(output_dir, subject, run_uuid, bids_dir=bids_dir)
    html = render("participant.html.j2", **report.context())
    path = Path(output_dir) / f"sub-{report.subject}.html"
    atomic_write_text(path, html)
    LOGGER.info("wrote %s (%.1f s)", path, time.perf_counter() - start)
    return path
