"""Report plumbing shared by the participant and group reports.

Self-contained HTML: every figure is embedded (base64 PNG for image slices, inline SVG for
plots), the style sheet is inline, nothing is loaded from a file, CDN or network. Templates
are jinja2 with autoescape on, so every string read from the data (file names, lesion names,
participants.tsv values, crash-file text) is escaped; only figures produced here are marked
safe, after :func:`clean_svg`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import sys
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

#: Installed packages whose versions the reports print (distribution names).
KEY_PACKAGES = ("nipype", "antspyx", "pybids", "nibabel", "numpy", "scipy", "pandas",
                "matplotlib", "jinja2")

#: matplotlib settings of every report figure: text stays text in SVG (small files; the
#: browser's sans-serif font), and no date or random id makes reruns differ.
RC = {"svg.fonttype": "none", "svg.hashsalt": "bids-agquant-report", "font.size": 8,
      "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
      "xtick.labelsize": 7, "ytick.labelsize": 7, "font.family": "sans-serif"}


def package_versions() -> dict[str, str]:
    """``{"python": ..., "bids-agquant": ..., <package>: <version>}``; "not installed" if so."""
    from .. import __version__

    versions = {"bids-agquant": __version__, "python": sys.version.split()[0]}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# --------------------------------------------------------------------------- reading
def read_tsv(path: Path | None) -> pd.DataFrame | None:
    """A BIDS TSV (``n/a`` = missing), or None when the file is absent or unreadable."""
    if path is None:
        return None
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    except (OSError, ValueError):
        return None


def read_tsv_text(path: Path | None) -> pd.DataFrame | None:
    """The same TSV with every cell as the exact text written (for exact comparisons)."""
    if path is None:
        return None
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return None


def read_json(path: Path | None) -> dict | None:
    """A JSON object, or None when the file is absent (or ``path`` is None) or unreadable."""
    if path is None:
        return None
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_crash_file(path: Path) -> dict:
    """Node name, working directory, the last error line and the full text of a Nipype
    text crash file (``crashfile_format = txt``)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return {"file": Path(path).name, "node": "?", "error": f"unreadable: {exc}", "text": ""}
    node = re.search(r"^Node:\s*(.+)$", text, re.M)
    workdir = re.search(r"^Working directory:\s*(.+)$", text, re.M)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    error = next((line.strip() for line in reversed(lines)
                  if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line)),
                 lines[-1].strip() if lines else "")
    return {"file": Path(path).name, "node": node.group(1).strip() if node else "?",
            "workdir": workdir.group(1).strip() if workdir else "", "error": error,
            "text": text[-20000:]}


# --------------------------------------------------------------------------- figures
def png_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a ``data:image/png;base64,`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def svg_markup(fig, prefix: str) -> Markup:
    """A matplotlib figure as inline SVG markup (ids prefixed to stay unique in the page)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return clean_svg(buffer.getvalue(), prefix)


#: Tags refused in an inlined SVG, and event-handler attributes (checked inside tags only:
#: text such as a lesion name may say anything, it is escaped).
_FORBIDDEN_TAG = re.compile(r"^<\s*(script|foreignObject|iframe|image|object|embed)\b", re.I)
_EVENT_ATTRIBUTE = re.compile(r"\son\w+\s*=", re.I)


def clean_svg(text: str, prefix: str) -> Markup:
    """SVG text ready to inline: XML declaration, DOCTYPE, comments and metadata removed,
    every ``id``
    and its references prefixed with ``prefix`` (several figures share matplotlib's ids),
    and refused (ValueError) if it holds scripts, event handlers, foreign objects or
    references to anything but its own ids."""
    text = re.sub(r"<\?xml[^>]*\?>", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    # RDF metadata (creator, dates, licence URIs) is not needed on the page.
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    for tag in re.findall(r"<[^>]*>", text):
        if (_FORBIDDEN_TAG.search(tag) or _EVENT_ATTRIBUTE.search(tag)
                or re.search(r"""url\(\s*(?!["']?#)""", tag)):
            raise ValueError(f"SVG with active or external content refused: {tag[:80]!r}")
        for ref in re.findall(r"""(?:xlink:)?href\s*=\s*["']([^"']*)["']""", tag):
            if not ref.startswith("#"):
                raise ValueError(f"SVG with an external reference refused: {ref!r}")
    text = re.sub(r"""\bid\s*=\s*(["'])([^"']+)\1""", rf'id="{prefix}-\2"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r"""((?:xlink:)?href\s*=\s*["'])#""", rf"\1#{prefix}-", text)
    return Markup(text.strip())


# --------------------------------------------------------------------------- formatting
def fmt(value, digits: int = 4) -> str:
    """A number for a human: ``digits`` significant digits, ``n/a`` for missing values."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return "n/a"
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    text = str(value)
    return "n/a" if text in ("nan", "") else text


def slug(text: str) -> str:
    """An HTML id from a label (``ses-D0_ce-AGuIX`` → ``ses-D0-ce-AGuIX``)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", str(text)).strip("-") or "x"


# --------------------------------------------------------------------------- rendering
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["slug"] = slug
    return env


def _load_template(name: str) -> str:
    return resources.files("bids_agquant.data").joinpath("templates").joinpath(name).read_text()


def render(template: str, **context) -> str:
    """Render ``data/templates/<template>`` with autoescape on."""
    return _environment().get_template(template).render(**context)
