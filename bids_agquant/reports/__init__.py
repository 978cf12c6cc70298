"""Self-contained HTML QC reports (DESIGN.md §7): ``sub-<id>.html`` and ``group.html``.

``participant`` and ``group`` assemble what the runs wrote; ``figures`` and
``group_figures`` draw (matplotlib, embedded PNG/SVG); ``core`` renders the jinja2 templates
of ``bids_agquant/data/templates`` with autoescape on. The pure numbers behind the warnings
are in :mod:`bids_agquant.qc`. The modules are imported on first use (matplotlib and jinja2
are not needed to build a workflow).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_group_report", "write_participant_report"]


def write_participant_report(output_dir: Path, subject: str, run_uuid: str, *,
                             bids_dir: Path | None = None) -> Path:
    """Write ``output_dir/sub-<id>.html``; see :mod:`bids_agquant.reports.participant`."""
    from .participant import write_participant_report as write

    return write(output_dir, subject, run_uuid, bids_dir=bids_dir)


def write_group_report(output_dir: Path, *, bids_dir: Path | None = None) -> Path:
    """Write ``output_dir/group.html``; see :mod:`bids_agquant.reports.group`."""
    from .group import write_group_report as write

    return write(output_dir, bids_dir=bids_dir)
