"""HTML QC reports (``sub-<id>.html``, ``group.html``).

Fast unit tests of the report maths and sanitising, then (``slow``) one run of the reference
dataset (3 participants, 2 mm) through participant and group levels, whose reports are
parsed (every embedded figure decoded, every table compared with its TSV), rendered in
headless Chromium (no console error, no failed or external request), and a second run
reusing its Nipype cache in which one node of one timepoint is made to fail.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_agquant.qc import (
    POOR_REGISTRATION_CORRELATION,
    registration_quality,
    rigid_motion,
)
from bids_agquant.reports.core import clean_svg, fmt

# --------------------------------------------------------------------------- HTML parsing
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Page(HTMLParser):
    """Elements, ids, images, table cells and text of a report; tags must balance."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: dict[str, dict] = {}
        self.images: list[str] = []
        self.hrefs: list[str] = []
        self.tables: list[dict] = []  # {"attrs", "rows": [{"attrs", "cells": [...]}]}
        self.sections: list[str] = []  # ids of <section>, in order
        self._cell: dict | None = None
        self.text_parts: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack[-5:]}")

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            if attrs["id"] in self.ids:
                self.errors.append(f"duplicate id {attrs['id']}")
            self.ids[attrs["id"]] = {"tag": tag, **attrs}
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "section" and "id" in attrs:
            self.sections.append(attrs["id"])
        if tag == "table":
            self.tables.append({"attrs": attrs, "rows": [], "head": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append({"attrs": attrs, "cells": []})
        elif tag in ("td", "th") and self.tables and self.tables[-1]["rows"]:
            self._cell = {"tag": tag, "attrs": attrs, "text": ""}
            self.tables[-1]["rows"][-1]["cells"].append(self._cell)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else None}")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def table(self, **attrs) -> dict:
        found = [t for t in self.tables if all(t["attrs"].get(k) == v for k, v in attrs.items())]
        assert len(found) == 1, f"{len(found)} tables with {attrs}"
        return found[0]


def body_rows(table: dict) -> list[dict]:
    """Rows with <td> cells as {column: (exact value, shown text)}."""
    out = []
    for row in table["rows"]:
        cells = [c for c in row["cells"] if c["tag"] == "td"]
        if cells:
            out.append({c["attrs"].get("data-col"): (c["attrs"].get("data-value"),
                                                     c["text"].strip()) for c in cells})
    return out


def inline_svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def check_figures(html: str) -> tuple[int, int]:
    """Decode every embedded PNG and parse every inline SVG; return their counts."""
    from matplotlib.image import imread

    page = Page(html)
    assert not page.errors, page.errors[:5]
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(io.BytesIO(data), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50
        assert np.ptp(pixels[..., :3]) > 0.2, "a blank figure"
    svgs = inline_svgs(html)
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        assert len(list(root.iter())) > 20
    return len(page.images), len(svgs)


def check_self_contained(html: str) -> None:
    """No script, style sheet, frame, font or image from outside the page; links only to
    anchors of the page or to sibling reports; no URL but XML namespaces."""
    page = Page(html)
    for src in page.images:
        assert src.startswith("data:"), src[:80]
    for href in page.hrefs:
        assert href.startswith("#") or re.fullmatch(r"sub-[A-Za-z0-9]+\.html", href), href
    lowered = html.lower()
    for needle in ("<script", "<link", "<iframe", "<object", "<embed", "@import",
                   "<base", "src=\"http", "srcset"):
        assert needle not in lowered, needle
    assert not re.search(r"url\((?!#)", html), "url() to something else than an own id"
    for match in re.finditer(r"(?:https?|ftp|file)://", html):
        before = html[max(0, match.start() - 16):match.start()]
        assert re.search(r"xmlns(:\w+)?=\"$", before), html[match.start() - 40:match.end() + 40]


# --------------------------------------------------------------------------- fast tests
def test_registration_quality_is_one_for_identical_images_and_drops_with_shift():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 2) + 5.0
    mask = np.ones(image.shape, bool)
    same = registration_quality(image, image, mask)
    assert same["correlation"] == pytest.approx(1.0)
    assert same["normalised_mutual_information"] == pytest.approx(2.0, abs=1e-9)
    assert same["n_voxels"] == image.size
    shifted = registration_quality(image, np.roll(image, 3, axis=0), mask)
    assert shifted["correlation"] < 0.9 and shifted["normalised_mutual_information"] < 1.5
    # a linear intensity change is not a misregistration
    scaled = registration_quality(image, 3 * image + 7, mask)
    assert scaled["correlation"] == pytest.approx(1.0)
    empty = registration_quality(image, image, np.zeros(image.shape, bool))
    assert math.isnan(empty["correlation"]) and empty["n_voxels"] == 0
    with pytest.raises(ValueError):
        registration_quality(image, image[:-1], mask)


def test_rigid_motion_of_a_known_transform():
    angle = np.radians(5.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    params = np.r_[rot.ravel(), [3.0, 4.0, 0.0]]
    motion = rigid_motion(params)
    assert motion["rotation_deg"] == pytest.approx(5.0)
    assert motion["translation_mm"] == pytest.approx(5.0)
    assert rigid_motion(np.r_[np.eye(3).ravel(), 0, 0, 0])["rotation_deg"] == pytest.approx(0)


def test_clean_svg_prefixes_ids_and_refuses_active_content():
    svg = ('<?xml version="1.0"?><!DOCTYPE svg><svg xmlns="http://www.w3.org/2000/svg" '
           'xmlns:xlink="http://www.w3.org/1999/xlink"><metadata><a>http://x</a></metadata>'
           '<defs><clipPath id="c1"><rect/></clipPath></defs>'
           '<g clip-path="url(#c1)"><use xlink:href="#c1"/></g></svg>')
    out = str(clean_svg(svg, "fig0"))
    assert out.startswith("<svg") and "<?xml" not in out and "metadata" not in out
    assert 'id="fig0-c1"' in out and "url(#fig0-c1)" in out and 'xlink:href="#fig0-c1"' in out
    ET.fromstring(out)
    for bad in ('<svg><script>alert(1)</script></svg>', '<svg><g onload="x()"/></svg>',
                '<svg><image href="http://evil/x.png"/></svg>',
                '<svg><use xlink:href="other.svg#a"/></svg>',
                '<svg><rect style="fill: url(http://evil/p)"/></svg>'):
        with pytest.raises(ValueError):
            clean_svg(bad, "p")


def test_fmt():
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(np.float64(2.0)) == "2"
    assert fmt(0.0123456) == "0.01235" and fmt([2.0, 5.0]) == "2, 5" and fmt(True) == "yes"


def test_display_planes_keep_orientation():
    """A mark at the participant's right-anterior-superior corner lands at the right (R),
    top (A) of the axial view, whatever the voxel order of the file."""
    import nibabel as nb

    from bids_agquant.reports.figures import Planes

    data = np.zeros((20, 30, 10), np.float32)
    data[15:, 25:, 8:] = 1.0  # +x (R), +y (A), +z (S) corner in RAS voxel order
    ras = nb.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    # The same image stored L-R flipped (LAS voxel order).
    flip = np.diag([-2.0, 2.0, 3.0, 1.0])
    flip[0, 3] = 38.0
    las = nb.Nifti1Image(data[::-1].copy(), flip)
    point = np.array([34.0, 54.0, 27.0])
    for img in (ras, las):
        planes = Planes(img, point)
        axial, coronal, sagittal = planes.sample(img, order=0)
        assert axial.shape == (30, 20)  # rows = A-P, columns = L-R
        assert axial[-1, -1] == 1 and axial[0, 0] == 0
        assert coronal[-1, -1] == 1 and sagittal[-1, -1] == 1


# --------------------------------------------------------------------------- pipeline runs
def _uuid(out: Path, subject: str) -> str:
    runs = sorted((out / f"sub-{subject}" / "log").iterdir())
    return runs[-1].name


@pytest.fixture(scope="module")
def reference_run(reference_run):
    """The shared participant + group run (tests/conftest.py), with its run ids."""
    out, subjects = reference_run["out"], reference_run["subjects"]
    return {**reference_run, "uuid": {s: _uuid(out, s) for s in subjects}}


@pytest.fixture(scope="module")
def broken_run(reference_run, tmp_path_factory):
    """sub-01 again (reusing the cache, new output folder, Linear plugin in-process) with the
    VFA uptake node of ses-D8 made to fail."""
    from bids_agquant.cli.run import main as run_main
    from bids_agquant.interfaces.qmri import ComputeUptake

    out = tmp_path_factory.mktemp("broken") / "out"
    work = reference_run["work"]
    cached = list(work.glob("**/sub_01_wf/uptake_vfa_D8_wf/uptake"))
    assert len(cached) == 1, cached
    shutil.rmtree(cached[0])  # so that the node runs (and fails) instead of being reused
    original = ComputeUptake._run_interface

    def failing(self, runtime):
        if Path(runtime.cwd).parent.name == "uptake_vfa_D8_wf":
            raise RuntimeError("deliberate failure of ses-D8 (report test)")
        return original(self, runtime)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ComputeUptake, "_run_interface", failing)
        code = run_main([str(reference_run["bids"]), str(out), "participant",
                         "--participant-label", "01", "-w", str(work), "--plugin", "Linear",
                         "--skip-bids-validation"])
    return {"out": out, "code": code, "uuid": _uuid(out, "01")}


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_report_is_valid_html_with_decodable_figures(reference_run):
    out = reference_run["out"]
    reports = [out / f"sub-{s}.html" for s in reference_run["subjects"]] + [out / "group.html"]
    for path in reports:
        assert path.is_file(), path
        html = _html(path)
        pngs, svgs = check_figures(html)
        check_self_contained(html)
        if path.name == "group.html":
            assert svgs >= 5
        else:
            assert pngs >= 4 and svgs >= 2, (path.name, pngs, svgs)


@pytest.mark.slow
def test_participant_report_sections_lesion_rows_and_parameters(reference_run):
    from bids_agquant.config import resolve_agent
    from bids_agquant.dro import VFA_FLIP_DEG, VFA_TR_S

    out, bids = reference_run["out"], reference_run["bids"]
    aguix = resolve_agent("AGuIX")
    participants = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    for subject in reference_run["subjects"]:
        html = _html(out / f"sub-{subject}.html")
        page = Page(html)
        for section in ("summary", "warnings", "errors", "methods"):
            assert section in page.ids, (subject, section)
        assert "NanoRad" in page.text and "NanoBrainMets" in page.text
        assert "sciadv.aay5279" in page.text and "NCT04899908" in page.text
        # participants.tsv values as written
        row = participants[participants["participant_id"] == f"sub-{subject}"].iloc[0]
        cells = {c["attrs"]["data-key"]: c["text"] for r in page.table(id="participant")["rows"]
                 for c in r["cells"] if "data-key" in c["attrs"]}
        for key in ("agent", "dose_mg_per_kg", "weight_kg"):
            assert cells[key] == row[key]
        versions = {c["attrs"]["data-key"]: c["text"] for r in page.table(id="versions")["rows"]
                    for c in r["cells"] if "data-key" in c["attrs"]}
        assert versions["bids-agquant"] and versions["nipype"] and versions["antspyx"]

        lesion_files = sorted((out / f"sub-{subject}").glob("ses-*/anat/*_lesions.tsv"))
        assert lesion_files
        for tsv in lesion_files:
            rel = tsv.relative_to(out).as_posix()
            text = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
            table = page.table(**{"data-file": rel})
            rows = body_rows(table)
            assert len(rows) == len(text), rel
            for shown, (_, expected) in zip(rows, text.iterrows(), strict=True):
                for column, (raw, visible) in shown.items():
                    assert raw == expected[column], (rel, column)
                    if raw not in ("n/a", "") and re.fullmatch(r"-?[\d.e+-]+", raw):
                        assert float(visible) == pytest.approx(float(raw), rel=1e-3, abs=1e-12)
            timepoint = text["timepoint"].iloc[0]
            method = text["t1_method"].iloc[0]
            section = f"{re.sub(r'[^A-Za-z0-9-]+', '-', timepoint)}-{method}"
            assert section in page.ids
            # controls and profiles of the same timepoint are shown too
            page.table(**{"data-file": rel.replace("_lesions.tsv", "_controls.tsv")})

        params = {r["attrs"]["data-key"]: [c["text"] for c in r["cells"] if c["tag"] == "td"]
                  for r in page.table(id="parameters")["rows"] if r["attrs"].get("data-key")}
        columns = [c["text"] for c in page.table(id="parameters")["rows"][0]["cells"]][1:]
        for i, column in enumerate(columns):
            timepoint, method = [part.strip() for part in column.split("·")]
            if method == "vfa":
                assert [float(v) for v in params["FlipAngle"][i].split(",")] == list(VFA_FLIP_DEG)
                assert float(params["RepetitionTimeExcitation"][i]) == VFA_TR_S
            else:  # the raw per-inversion sidecars and the inherited top-level values
                session = timepoint.split("_")[0]
                sidecars = [json.loads((bids / f"sub-{subject}" / session / "anat" /
                                        f"sub-{subject}_{timepoint}_inv-{n}_part-mag_MP2RAGE.json"
                                        ).read_text()) for n in (1, 2)]
                top = json.loads((bids / "MP2RAGE.json").read_text())
                assert [float(v) for v in params["InversionTimes"][i].split(",")] == [
                    s["InversionTime"] for s in sidecars]
                assert [float(v) for v in params["FlipAngle"][i].split(",")] == [
                    s["FlipAngle"] for s in sidecars]
                assert float(params["RepetitionTimePreparation"][i]) == \
                    top["RepetitionTimePreparation"]
                assert float(params["RepetitionTimeExcitation"][i]) == \
                    top["RepetitionTimeExcitation"]
            if timepoint == "ses-D0":  # the baseline has no concentration
                continue
            agent = aguix if row["agent"] == "AGuIX" else resolve_agent("aguix-nanorad")
            assert float(params["Relaxivity"][i]) == agent.r1_per_mM_per_s
            assert float(params["GdPerParticle"][i]) == agent.gd_per_particle
            assert float(params["ParticleMolarMass"][i]) == agent.particle_molar_mass_g_per_mol
            assert float(params["MassPerMillimolarGd"][i]) == agent.mg_per_L_per_mM
        assert "1 mM Gd = 1000 mg/L" in page.text  # the colour bar's second axis, mM
        assert "0–300 mg/L" in page.text  # the default fixed scale

        # registration check of every post-agent timepoint, with its numbers
        quality = re.findall(r'data-correlation="([^"]+)"', html)
        posts = [t for t in page.sections if t.startswith("tp-") and t != "tp-ses-D0"]
        assert len(quality) == len(posts) >= 1
        for value in quality:
            assert float(value) >= POOR_REGISTRATION_CORRELATION
        assert "No node crashed" in page.text


@pytest.mark.slow
def test_warnings_follow_the_tables(reference_run):
    out = reference_run["out"]
    for subject in reference_run["subjects"]:
        page = Page(_html(out / f"sub-{subject}.html"))
        tables = pd.concat([pd.read_csv(f, sep="\t", na_values=["n/a"]) for f in
                            (out / f"sub-{subject}").glob("ses-*/anat/*_lesions.tsv")])
        below = int((tables["quantification"] == "<LoQ").sum())
        items = page.text.count("(<LoQ)")
        assert items == below, (subject, items, below)
        controls = pd.concat([pd.read_csv(f, sep="\t") for f in
                              (out / f"sub-{subject}").glob("ses-*/anat/*_controls.tsv")])
        vfa_without_b1 = (any((out / f"sub-{subject}").glob("ses-*/anat/*_desc-vfa_T1map.nii.gz"))
                          and not any((reference_run["bids"] / f"sub-{subject}")
                                      .glob("ses-*/fmap/*_TB1map.nii.gz")))
        expected = ("warnings" if below or (tables["negative_fraction"] > 0.25).any()
                    or controls["control_failed"].astype(str).str.lower().eq("true").any()
                    or vfa_without_b1 else "ok")
        assert page.ids["status"]["data-status"] == expected, subject
    # The placebo participant's lesions are all below the LoQ, and said so.
    placebo = pd.read_csv(reference_run["bids"] / "participants.tsv", sep="\t")
    pid = placebo.loc[placebo["agent"] == "placebo", "participant_id"].item()
    assert "below the limit of quantification" in Page(_html(out / f"{pid}.html")).text


@pytest.mark.slow
def test_poor_registration_threshold_separates_the_reference_dataset(reference_run):
    """Every registered session clears the threshold; the same images one voxel off do not."""
    import nibabel as nb

    out = reference_run["out"]
    registered = sorted(out.glob("sub-*/ses-*/anat/*_space-D0_desc-preproc_T1w.nii.gz"))
    assert registered
    for path in registered:
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        quality = meta["RegistrationQuality"]
        assert quality["Correlation"] >= POOR_REGISTRATION_CORRELATION + 0.02
        assert quality["CorrelationBeforeRegistration"] < quality["Correlation"]
        subject = path.name.split("_")[0]
        base = reference_run["bids"] / subject / "ses-D0" / "anat" / f"{subject}_ses-D0_T1w.nii.gz"
        fixed = np.asarray(nb.load(base).dataobj, np.float64)
        moving = np.asarray(nb.load(path).dataobj, np.float64)
        from bids_agquant.qmri.masks import signal_mask

        mask = signal_mask(fixed.astype(np.float32))
        off = registration_quality(fixed, np.roll(moving, 1, axis=0), mask)
        assert off["correlation"] < POOR_REGISTRATION_CORRELATION, (path.name, off)


@pytest.mark.slow
def test_group_report_tables_and_analyses(reference_run):
    out = reference_run["out"]
    html = _html(out / "group.html")
    page = Page(html)
    stats = json.loads((out / "group_stats.json").read_text())
    for key in ("dose_response", "se_vs_concentration_per_participant", "size_vs_uptake_lar",
                "inference_suspected_placebo_kmeans", "persistence"):
        assert key in page.ids
        assert page.ids[key]["data-status"] == stats["analyses"][key]["status"]
    for figure in stats["figures"]:  # every group figure is inlined
        assert f"{figure}</figcaption>" in html
    lesions = pd.read_csv(out / "group_lesions.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = body_rows(page.table(id="lesions-table"))
    assert len(rows) == len(lesions)
    for shown, (_, expected) in zip(rows, lesions.iterrows(), strict=True):
        for column, (raw, _) in shown.items():
            assert raw == expected[column]
    summary = pd.read_csv(out / "group_participants.tsv", sep="\t", dtype=str)
    assert len(body_rows(page.table(id="participants-table"))) == len(summary)
    for subject in reference_run["subjects"]:
        assert f"sub-{subject}.html" in page.hrefs
    assert page.ids["status"]["data-status"] == "ok"


@pytest.mark.slow
def test_participant_report_escapes_user_strings(reference_run, tmp_path):
    """Every string from the data is escaped (participants.tsv and lesion names are user
    input)."""
    from bids_agquant.reports import write_participant_report

    out = tmp_path / "out"
    shutil.copytree(reference_run["out"], out)
    bids = tmp_path / "bids"
    shutil.copytree(reference_run["bids"], bids)
    evil = '<script>alert("x")</script>'
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    table.loc[table["participant_id"] == "sub-01", "primary_tumor"] = evil
    table.to_csv(bids / "participants.tsv", sep="\t", index=False)
    lesions = next(out.glob("sub-01/ses-D1/anat/*_desc-vfa_lesions.tsv"))
    rows = pd.read_csv(lesions, sep="\t", dtype=str, keep_default_na=False)
    rows.loc[0, "lesion_name"] = '<img src=x onerror="alert(1)">&'
    rows.to_csv(lesions, sep="\t", index=False)
    path = write_participant_report(out, "sub-01", reference_run["uuid"]["01"], bids_dir=bids)
    html = _html(path)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;" in html
    check_figures(html)
    check_self_contained(html)


@pytest.mark.slow
def test_report_shows_what_the_run_did_not_what_the_dataset_holds_now(reference_run,
                                                                       tmp_path):
    """The report reads the run's plan: a session added to the raw dataset after the run, or
    an image removed from it, does not change which timepoints and inputs it lists."""
    from bids_agquant.reports import write_participant_report

    out = tmp_path / "out"
    shutil.copytree(reference_run["out"], out)
    bids = tmp_path / "bids"
    shutil.copytree(reference_run["bids"], bids)
    shutil.copytree(bids / "sub-03" / "ses-D8", bids / "sub-03" / "ses-D15")
    for path in (bids / "sub-03" / "ses-D15").rglob("*ses-D8*"):
        path.rename(path.with_name(path.name.replace("ses-D8", "ses-D15")))
    flip = next((bids / "sub-03" / "ses-D1" / "anat").glob("*_flip-1_VFA.nii.gz"))
    flip.unlink()
    path = write_participant_report(out, "sub-03", reference_run["uuid"]["03"], bids_dir=bids)
    html = _html(path)
    assert "ses-D15" not in html
    assert flip.name in html  # the run used it: it is listed among the inputs
    page = Page(html)
    assert [r["attrs"].get("data-key") for r in page.table(id="inputs")["rows"]
            if r["attrs"].get("data-key")] == ["ses-D0", "ses-D1", "ses-D8"]


@pytest.mark.slow
def test_broken_timepoint_still_gets_a_report_with_the_error(broken_run):
    out = broken_run["out"]
    assert broken_run["code"] != 0
    crashes = sorted((out / "sub-01" / "log" / broken_run["uuid"]).glob("crash-*.txt"))
    assert crashes
    html = _html(out / "sub-01.html")
    page = Page(html)
    assert not page.errors
    check_figures(html)
    check_self_contained(html)
    assert page.ids["status"]["data-status"] == "errors"
    crash_rows = body_rows(page.table(id="crashes"))
    assert crash_rows
    nodes = [r for r in page.table(id="crashes")["rows"] if r["attrs"].get("data-node")]
    assert any(r["attrs"]["data-node"].endswith("uptake_vfa_D8_wf.uptake") for r in nodes)
    for crash in crashes:
        assert crash.name in html
    assert "deliberate failure of ses-D8" in page.text
    # the failed timepoint shows what is missing; the others are complete
    d8 = html[html.index('id="tp-ses-D8"'):html.index('id="errors"')]
    assert "expected outputs are missing" in d8 and "Crashed in this timepoint" in d8
    assert "uptake_vfa_D8_wf.uptake" in d8
    assert "sub-01_ses-D8_space-D0_desc-vfa_massconc.nii.gz" in d8
    assert "sub-01_ses-D8_desc-vfa_lesions.tsv" in d8
    d1 = html[html.index('id="tp-ses-D1"'):html.index('id="tp-ses-D8"')]
    assert "expected outputs are missing" not in d1
    lesions = pd.read_csv(out / "sub-01/ses-D1/anat/sub-01_ses-D1_desc-vfa_lesions.tsv", sep="\t")
    rows = body_rows(page.table(**{"data-file":
                                   "sub-01/ses-D1/anat/sub-01_ses-D1_desc-vfa_lesions.tsv"}))
    assert len(rows) == len(lesions)
    # the MP2RAGE branch of ses-D8 did not depend on the failed node
    page.table(**{"data-file": "sub-01/ses-D8/anat/sub-01_ses-D8_desc-mp2rage_lesions.tsv"})


# --------------------------------------------------------------------------- Chromium
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


class DevTools:
    """Minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3: our
    commands in, fd 4: its answers and events out; JSON messages ended by NUL)."""

    def __init__(self, executable: str, profile: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def child_fds():
            # Via fds >= 10 first: dup2 onto itself would keep the pipe's close-on-exec flag,
            # and the second dup2 could overwrite the first pipe end.
            commands = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            answers = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)  # dup2 makes 3 and 4 inheritable
            os.dup2(answers, 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(timeout)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.events.append(self._read(max(0.01, end - time.monotonic())))
            except TimeoutError:
                return

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may close the pipe before answering
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def render_in_chromium(executable: str, html: Path, png: Path, width: int = 1280) -> dict:
    """Load ``html`` in headless Chromium, screenshot the whole page to ``png``; return the
    console errors, exceptions, log errors, failed requests and non-local requests."""
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(executable, profile)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": 900, "deviceScaleFactor": 1,
                          "mobile": False}, session=session)
            url = html.resolve().as_uri()
            browser.send("Page.navigate", {"url": url}, session=session)
            browser.wait_for("Page.loadEventFired")
            browser.drain(0.5)
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": math.ceil(size["height"]),
                         "scale": 1}}, session=session, timeout=120)
            png.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.close()
    events = browser.events
    problems = {
        "console": [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
                    and e["params"].get("type") in ("error", "assert", "warning")],
        "exceptions": [e["params"] for e in events
                       if e.get("method") == "Runtime.exceptionThrown"],
        "log": [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                and e["params"]["entry"].get("level") in ("error", "warning")],
        "failed": [e["params"] for e in events if e.get("method") == "Network.loadingFailed"],
        "requests": [e["params"]["request"]["url"] for e in events
                     if e.get("method") == "Network.requestWillBeSent"
                     and not e["params"]["request"]["url"].startswith(("data:", url))],
    }
    problems["loaded"] = any(e.get("method") == "Network.requestWillBeSent"
                             and e["params"]["request"]["url"] == url for e in events)
    problems["height"] = size["height"]
    return problems


@pytest.mark.slow
def test_reports_render_in_headless_chromium(reference_run, broken_run, tmp_path):
    from conftest import require_program

    require_program("chromium")
    from matplotlib.image import imread

    executable = shutil.which("chromium")
    out = reference_run["out"]
    reports = [out / f"sub-{s}.html" for s in reference_run["subjects"]]
    reports += [out / "group.html", broken_run["out"] / "sub-01.html"]
    shots = Path(os.environ.get("BIDS_AGQUANT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    for i, report in enumerate(reports):
        png = shots / f"{i}_{report.stem}.png"
        problems = render_in_chromium(executable, report, png)
        assert problems["loaded"], report
        for kind in ("console", "exceptions", "log", "failed", "requests"):
            assert not problems[kind], (report, kind, problems[kind][:3])
        pixels = imread(png)
        assert pixels.shape[1] == 1280 and pixels.shape[0] >= 0.99 * problems["height"] > 1500
        assert np.ptp(pixels[..., :3]) > 0.5  # not a blank page


def test_chromium_harness_sees_console_errors_and_external_requests(tmp_path):
    """The renderer used above is not blind: a page with a script error, a console error, a
    missing file and an external image is reported on every count."""
    from conftest import require_program

    require_program("chromium")
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                    '<img src="http://192.0.2.1/x.png">'
                    '<script>console.error("boom"); undefined_function();</script>'
                    '<div style="height: 2000px"></div></body></html>')
    problems = render_in_chromium(shutil.which("chromium"), page, tmp_path / "bad.png")
    assert problems["console"] and problems["exceptions"] and problems["log"]
    assert problems["failed"]
    assert any(url.startswith("http://192.0.2.1") for url in problems["requests"])
    assert (tmp_path / "bad.png").stat().st_size > 1000
