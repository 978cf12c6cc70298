"""Report figures: arrays in, embedded images out (matplotlib figure canvases, no pyplot).

Image slices become compact PNG data URIs; plots become inline SVG. Every image is shown
on display planes of one grid through a world point (:class:`Planes`); any other image of
the same scanner space is sampled on those planes by its own affine, so a native-space map,
the reference-space labels and a raw T1w line up without resampling whole volumes.
Display convention: neurological (the participant's left on the left), mm extents.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nb
import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from scipy import ndimage

from .core import RC, png_data_uri, svg_markup

#: Colour map of concentration maps (fixed scale); values below 0 are drawn in UNDER_COLOUR.
CONC_CMAP = "hot"
UNDER_COLOUR = "#2353b8"
#: Fixed display ranges of the relaxometry maps (s and 1/s), the same for every timepoint.
T1_RANGE_S = (0.0, 3.0)
R1_RANGE_PER_S = (0.0, 3.0)
#: Side of the checkerboard squares, mm.
CHECKER_MM = 16.0
#: Half-width of the per-lesion crops, mm (at least; large lesions get more).
CROP_HALF_MM = 30.0
#: At most this many lesions get their own crop / histogram / profile panel.
MAX_LESION_PANELS = 12

_VIEWS = ("axial", "coronal", "sagittal")
#: (horizontal, vertical, fixed) canonical axes of each view.
_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}
_SIDE_LABELS = {"axial": ("L", "R"), "coronal": ("L", "R"), "sagittal": ("P", "A")}


def label_colour(label: int):
    """Colour of lesion ``label`` (tab10, cycling)."""
    return colormaps["tab10"]((int(label) - 1) % 10)


@dataclass
class Plane:
    """One display plane: world coordinates of its pixels and its extent in mm."""

    view: str
    world: np.ndarray  # (3, rows, cols) RAS mm; rows = vertical axis (bottom first)
    extent: tuple[float, float, float, float]
    pixel_mm: float


class Planes:
    """Display planes of ``grid`` (any NIfTI) through the world point ``point_mm``.

    Parameters
    ----------
    grid : nibabel image
        Defines the sampling grid (its closest canonical orientation); data are not read.
    point_mm : array-like of 3 floats
        World (RAS) point the planes pass through (clipped into the grid).
    views : sequence of str
        Any of ``axial``, ``coronal``, ``sagittal``.
    crop_mm : float, optional
        Keep only a square of this half-width around the point (in-plane).
    """

    def __init__(self, grid, point_mm, views=_VIEWS, crop_mm: float | None = None):
        src_shape = tuple(int(n) for n in grid.shape[:3])
        ornt = nb.io_orientation(grid.affine)
        affine = grid.affine @ nb.orientations.inv_ornt_aff(ornt, src_shape)
        # Canonical axis k is the source axis that ``ornt`` sends to k.
        shape = np.asarray([src_shape[int(np.flatnonzero(ornt[:, 0] == k)[0])]
                            for k in range(3)])
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        centre = np.linalg.solve(affine, np.r_[np.asarray(point_mm, float), 1.0])[:3]
        centre = np.clip(np.rint(centre).astype(int), 0, shape - 1)
        self.point_mm = affine[:3, :3] @ centre + affine[:3, 3]
        self.planes = []
        for view in views:
            h, v, fixed = _AXES[view]
            ranges = []
            for axis in (h, v):
                lo, hi = 0, int(shape[axis])
                if crop_mm is not None:
                    half = int(np.ceil(crop_mm / zooms[axis]))
                    lo, hi = max(0, centre[axis] - half), min(hi, centre[axis] + half + 1)
                ranges.append(np.arange(lo, hi))
            hh, vv = np.meshgrid(ranges[0], ranges[1])  # rows = vertical
            ijk = np.zeros((3, *hh.shape))
            ijk[h], ijk[v], ijk[fixed] = hh, vv, centre[fixed]
            world = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3, None, None]
            extent = (float((ranges[0][0] - 0.5) * zooms[h]),
                      float((ranges[0][-1] + 0.5) * zooms[h]),
                      float((ranges[1][0] - 0.5) * zooms[v]),
                      float((ranges[1][-1] + 0.5) * zooms[v]))
            self.planes.append(Plane(view, world, extent, float(min(zooms[h], zooms[v]))))

    def sample(self, img, data: np.ndarray | None = None, *, order: int = 1) -> list[np.ndarray]:
        """``img`` (or ``data`` on its grid) on every plane; NaN outside its field of view."""
        if data is None:
            data = np.asarray(img.dataobj, dtype=np.float32)
        data = np.asarray(data, dtype=np.float32)
        if data.ndim > 3:
            data = data.reshape(data.shape[:3] + (-1,))[..., 0]
        inverse = np.linalg.inv(img.affine)
        out = []
        for plane in self.planes:
            vox = (np.tensordot(inverse[:3, :3], plane.world, axes=1)
                   + inverse[:3, 3, None, None])
            out.append(ndimage.map_coordinates(data, vox, order=order, mode="constant",
                                               cval=np.nan, prefilter=False))
        return out


# --------------------------------------------------------------------------- helpers
def anatomical_window(data: np.ndarray) -> tuple[float, float]:
    """Display range of an anatomical image: 0.5th-99.5th percentile of its positive voxels."""
    values = np.asarray(data, np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _blank(ax, plane: Plane, title: str | None = None):
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=7)


def _show(ax, image, plane: Plane, **kw):
    ax.imshow(np.ma.masked_invalid(image), origin="lower", extent=plane.extent,
              interpolation="nearest", **kw)


def _side_labels(ax, plane: Plane):
    left, right = _SIDE_LABELS[plane.view]
    for x, text in ((0.02, left), (0.98, right)):
        ax.text(x, 0.97, text, transform=ax.transAxes, color="white", fontsize=7.5,
                fontweight="bold", ha="left" if x < 0.5 else "right", va="top",
                path_effects=[withStroke(linewidth=1.0, foreground="black")])


def _contours(ax, labels2d: np.ndarray | None, plane: Plane, *, colour=None, lw=1.0,
              annotate: bool = True):
    """Outline every label of a 2-D label slice (its own colour, or ``colour``)."""
    if labels2d is None:
        return
    lab = np.nan_to_num(labels2d, nan=0).astype(int)
    rows, cols = lab.shape
    x0, x1, y0, y1 = plane.extent
    xs = np.linspace(x0 + (x1 - x0) / (2 * cols), x1 - (x1 - x0) / (2 * cols), cols)
    ys = np.linspace(y0 + (y1 - y0) / (2 * rows), y1 - (y1 - y0) / (2 * rows), rows)
    for value in np.unique(lab[lab > 0]):
        member = lab == value
        if member.all() or rows < 2 or cols < 2:
            continue
        c = colour if colour is not None else label_colour(value)
        ax.contour(xs, ys, member.astype(float), levels=[0.5], colors=[c], linewidths=lw)
        if annotate:
            r, q = np.argwhere(member).mean(axis=0)
            ax.text(xs[int(round(q))], ys[int(round(r))], str(value), color=c, fontsize=7,
                    ha="center", va="center", fontweight="bold")


def _panel_grid(rows: int, planes: list[Plane], *, panel_h: float = 2.1,
                colorbar: bool = False, mm_axis: bool = False, title_h: float = 0.3):
    """A figure with ``rows`` x ``len(planes)`` image axes sized to each plane's aspect ratio
    (fixed layout: constrained layout cost seconds per figure). Returns the figure, the
    axes (rows x cols) and the colour-bar rectangle of a range of rows (or None)."""
    aspects = [(p.extent[1] - p.extent[0]) / max(p.extent[3] - p.extent[2], 1e-6)
               for p in planes]
    widths = [panel_h * a for a in aspects]
    left, gap, row_gap, bottom = 0.35, 0.08, 0.22, 0.08
    bar_space = (1.35 if mm_axis else 0.85) if colorbar else 0.1
    width = left + sum(widths) + gap * (len(planes) - 1) + bar_space
    height = title_h + rows * panel_h + (rows - 1) * row_gap + bottom
    fig = Figure(figsize=(width, height), facecolor="white")
    axes = np.empty((rows, len(planes)), dtype=object)
    for r in range(rows):
        y = height - title_h - (r + 1) * panel_h - r * row_gap
        x = left
        for c, w in enumerate(widths):
            axes[r, c] = fig.add_axes([x / width, y / height, w / width, panel_h / height])
            x += w + gap
    bar_x = left + sum(widths) + gap * (len(planes) - 1) + (0.75 if mm_axis else 0.12)

    def bar_rect(first: int, last: int):
        top_y = height - title_h - first * (panel_h + row_gap)
        bottom_y = height - title_h - (last + 1) * panel_h - last * row_gap
        span = top_y - bottom_y
        return [bar_x / width, (bottom_y + 0.05 * span) / height, 0.12 / width,
                0.9 * span / height]

    return fig, axes, bar_rect


def _suptitle(fig, text: str):
    fig.suptitle(text, fontsize=7, y=1 - 0.05 / fig.get_figheight(), va="top")


# --------------------------------------------------------------------------- registration
def registration_figure(planes: Planes, *, baseline: list, registered: list, before: list | None,
                        head: list, lesions: list | None, session: str, reference: str) -> str:
    """Baseline vs registered session T1w (and the session before registration), with the
    baseline head outline and lesion contours, plus a checkerboard of the two; PNG URI."""
    rows = [(f"baseline {reference}", baseline), (f"{session} registered", registered),
            ("checkerboard", None)]
    if before is not None:
        rows.append((f"{session} before registration", before))
    with rc_context(RC):
        fig, axes, _ = _panel_grid(len(rows), planes.planes, title_h=0.45)
        base_win = anatomical_window(np.concatenate([b[np.isfinite(b)] for b in baseline]))
        reg_win = anatomical_window(np.concatenate([r[np.isfinite(r)] for r in registered]))
        for col, plane in enumerate(planes.planes):
            b = np.clip((baseline[col] - base_win[0]) / (base_win[1] - base_win[0]), 0, 1)
            r = np.clip((registered[col] - reg_win[0]) / (reg_win[1] - reg_win[0]), 0, 1)
            size = max(2, int(round(CHECKER_MM / plane.pixel_mm)))
            vv, hh = np.indices(b.shape)
            checker = np.where(((vv // size + hh // size) % 2) == 0, b, r)
            for row, (title, images) in enumerate(rows):
                ax = axes[row, col]
                _blank(ax, plane, title if col == 0 else None)
                if images is None:
                    image = checker
                elif images is baseline:
                    image = b
                elif images is registered:
                    image = r
                else:
                    image = np.clip((images[col] - reg_win[0]) / (reg_win[1] - reg_win[0]),
                                    0, 1)
                _show(ax, image, plane, cmap="gray", vmin=0, vmax=1)
                _contours(ax, head[col], plane, colour="cyan", lw=0.6, annotate=False)
                if lesions is not None:
                    _contours(ax, lesions[col], plane, lw=0.9, annotate=False)
                _side_labels(ax, plane)
        _suptitle(fig, "cyan: baseline head outline; coloured: lesions (GTV) in the baseline "
                       "space")
        return png_data_uri(fig, dpi=90)


# --------------------------------------------------------------------------- anatomy
def contours_figure(planes: Planes, *, anatomy: list, lesions: list | None, title: str) -> str:
    """A T1w with the GTV contours of the same space (ortho views); PNG URI."""
    with rc_context(RC):
        fig, axes, _ = _panel_grid(1, planes.planes, panel_h=2.4)
        win = anatomical_window(np.concatenate([a[np.isfinite(a)] for a in anatomy]))
        for ax, plane, image, lab in zip(axes[0], planes.planes, anatomy,
                                         lesions or [None] * len(anatomy), strict=True):
            _blank(ax, plane)
            _show(ax, image, plane, cmap="gray", vmin=win[0], vmax=win[1])
            _contours(ax, lab, plane)
            _side_labels(ax, plane)
        _suptitle(fig, title)
        return png_data_uri(fig, dpi=90)


def maps_figure(planes: Planes, *, t1: list | None, r1: list | None, lesions: list | None,
                title: str) -> str:
    """T1 (s) and R1 (1/s) maps on fixed scales, GTV contours in white; PNG URI."""
    rows = [(name, images, rng, cmap, unit) for name, images, rng, cmap, unit in (
        ("T1", t1, T1_RANGE_S, "viridis", "s"), ("R1", r1, R1_RANGE_PER_S, "magma", "1/s"))
        if images is not None]
    with rc_context(RC):
        fig, axes, bar_rect = _panel_grid(max(1, len(rows)), planes.planes, colorbar=True,
                                          title_h=0.45)
        for row, (name, images, rng, cmap, unit) in enumerate(rows):
            for col, plane in enumerate(planes.planes):
                ax = axes[row, col]
                _blank(ax, plane, f"{name} ({unit})" if col == 0 else None)
                _show(ax, images[col], plane, cmap=cmap, vmin=rng[0], vmax=rng[1])
                if lesions is not None:
                    _contours(ax, lesions[col], plane, colour="white", lw=0.7,
                              annotate=False)
                _side_labels(ax, plane)
            bar = fig.colorbar(ScalarMappable(Normalize(*rng), cmap),
                               cax=fig.add_axes(bar_rect(row, row)))
            bar.set_label(f"{name} ({unit})")
        _suptitle(fig, title)
        return png_data_uri(fig, dpi=90)


# --------------------------------------------------------------------------- concentration
def _mass_colorbar(fig, rect, vmax: float, mg_per_mM: float | None):
    """Colour bar of a fixed 0..vmax mg/L scale (right) with a second axis in mM Gd (left)."""
    cmap = colormaps[CONC_CMAP].with_extremes(under=UNDER_COLOUR)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, vmax), cmap), cax=fig.add_axes(rect),
                       extend="both")
    bar.set_label("agent, mg/L")
    if mg_per_mM:
        second = bar.ax.secondary_yaxis("left", functions=(lambda x: x / mg_per_mM,
                                                           lambda x: x * mg_per_mM))
        second.set_ylabel("Gd, mM")
    return bar


def _overlay_rgba(values: np.ndarray, vmax: float, inside: np.ndarray | None) -> np.ndarray:
    """RGBA of a concentration slice: fixed colour scale, below 0 in UNDER_COLOUR; opacity
    grows with |value| up to 15 % of the scale (or 0.9 inside ``inside``, 0 outside it)."""
    cmap = colormaps[CONC_CMAP].with_extremes(under=UNDER_COLOUR, bad=(0, 0, 0, 0))
    finite = np.isfinite(values)
    rgba = cmap(Normalize(0.0, vmax)(np.where(finite, values, np.nan)))
    if inside is None:
        alpha = np.clip(np.abs(np.nan_to_num(values)) / (0.15 * vmax), 0, 1) * 0.9
    else:
        alpha = np.where(inside, 0.9, 0.0)
    rgba[..., 3] = np.where(finite, alpha, 0.0)
    return rgba


def concentration_overview(planes: Planes, *, anatomy: list, mass: list, lesions: list | None,
                           vmax: float, mg_per_mM: float | None, title: str) -> str:
    """Whole-field mass concentration over the baseline T1w (opacity rises with |value|,
    negatives in blue), ortho views; PNG URI."""
    with rc_context(RC):
        fig, axes, bar_rect = _panel_grid(1, planes.planes, panel_h=2.4, colorbar=True,
                                          mm_axis=bool(mg_per_mM))
        win = anatomical_window(np.concatenate([a[np.isfinite(a)] for a in anatomy]))
        for ax, plane, image, values, lab in zip(axes[0], planes.planes, anatomy, mass,
                                                 lesions or [None] * len(mass), strict=True):
            _blank(ax, plane)
            _show(ax, image, plane, cmap="gray", vmin=win[0], vmax=win[1])
            ax.imshow(_overlay_rgba(values, vmax, None), origin="lower", extent=plane.extent,
                      interpolation="nearest")
            _contours(ax, lab, plane, colour="lime", lw=0.6, annotate=False)
            _side_labels(ax, plane)
        _mass_colorbar(fig, bar_rect(0, 0), vmax, mg_per_mM)
        _suptitle(fig, title)
        return png_data_uri(fig, dpi=90)


def concentration_lesions(crops: list[tuple[int, str, Planes, list, list, list]], *,
                          vmax: float, mg_per_mM: float | None, title: str) -> str:
    """Per lesion, an axial crop through its centroid: the map inside the GTV over the
    anatomy (top) and the whole-field map with opacity rising with |value|, so that noise and
    negatives around the lesion show (bottom); PNG URI.

    ``crops`` holds ``(lesion_id, name, planes, anatomy, mass, labels)`` per lesion.
    """
    with rc_context(RC):
        fig, axes, bar_rect = _panel_grid(2, [c[2].planes[0] for c in crops], panel_h=1.9,
                                          colorbar=True, mm_axis=bool(mg_per_mM), title_h=0.45)
        for col, (lesion_id, name, planes, anatomy, mass, labels) in enumerate(crops):
            plane = planes.planes[0]
            win = anatomical_window(anatomy[0])
            inside = np.nan_to_num(labels[0]).astype(int) == lesion_id
            top, bottom = axes[0, col], axes[1, col]
            _blank(top, plane, f"{name} (lesion {lesion_id})")
            _show(top, anatomy[0], plane, cmap="gray", vmin=win[0], vmax=win[1])
            top.imshow(_overlay_rgba(mass[0], vmax, inside), origin="lower",
                       extent=plane.extent, interpolation="nearest")
            _contours(top, labels[0], plane, colour="lime", lw=0.7, annotate=False)
            _blank(bottom, plane)
            _show(bottom, anatomy[0], plane, cmap="gray", vmin=win[0], vmax=win[1])
            bottom.imshow(_overlay_rgba(mass[0], vmax, None), origin="lower",
                          extent=plane.extent, interpolation="nearest")
            _contours(bottom, labels[0], plane, colour="lime", lw=0.6, annotate=False)
            _side_labels(top, plane)
        axes[0, 0].set_ylabel("inside GTV")
        axes[1, 0].set_ylabel("whole field")
        _mass_colorbar(fig, bar_rect(0, 1), vmax, mg_per_mM)
        _suptitle(fig, title)
        return png_data_uri(fig, dpi=90)


# --------------------------------------------------------------------------- plots
def _grid(n: int, width_per: float = 2.3, height: float = 2.0, max_cols: int = 4):
    cols = max(1, min(n, max_cols))
    rows = int(np.ceil(n / cols)) if n else 1
    width, total_h = width_per * cols + 0.2, height * rows + 0.35
    fig = Figure(figsize=(width, total_h), facecolor="white")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    # Fixed margins in inches (constrained layout cost seconds per figure).
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.1 / width, bottom=0.45 / total_h,
                        top=1 - 0.75 / total_h, wspace=0.45, hspace=0.95)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def histogram_figure(values_by_lesion: list[tuple[int, str, np.ndarray, dict]], *,
                     mg_per_mM: float | None, prefix: str, title: str):
    """Histogram of the voxel mass concentrations of each lesion, with its mean, median,
    zero and the mean's limit of quantification; inline SVG.

    ``values_by_lesion`` holds ``(lesion_id, name, values_mg_per_L, row)`` where ``row`` has
    ``mean``, ``median``, ``loq`` (mg/L, may be NaN) and ``negative_fraction``.
    """
    with rc_context(RC):
        fig, axes = _grid(len(values_by_lesion))
        for ax, (lesion_id, name, values, row) in zip(axes, values_by_lesion, strict=False):
            values = values[np.isfinite(values)]
            colour = label_colour(lesion_id)
            if values.size:
                ax.hist(values, bins=min(40, max(5, values.size // 5)), color=colour,
                        alpha=0.75)
            ax.axvline(0.0, color="0.4", lw=0.7)
            for key, style, label in (("mean", "-", "mean"), ("median", "--", "median")):
                if np.isfinite(row.get(key, np.nan)):
                    ax.axvline(row[key], color="black", ls=style, lw=1.0, label=label)
            loq = row.get("loq", np.nan)
            if np.isfinite(loq):
                ax.axvspan(-loq, loq, color="tab:red", alpha=0.12, label="mean within ±LoQ")
            ax.set_title(f"{name} (lesion {lesion_id}), n = {values.size}, "
                         f"neg. {row.get('negative_fraction', np.nan):.0%}")
            ax.set_xlabel("agent, mg/L")
            ax.set_ylabel("voxels")
            if mg_per_mM:
                top = ax.secondary_xaxis("top", functions=(lambda x: x / mg_per_mM,
                                                           lambda x: x * mg_per_mM))
                top.set_xlabel("Gd, mM")
            if lesion_id == values_by_lesion[0][0]:
                ax.legend(loc="upper left", frameon=False, fontsize=6)
        fig.suptitle(title)
        return svg_markup(fig, prefix)


def profiles_figure(profiles: pd.DataFrame, names: dict[int, str], *, prefix: str, title: str):
    """Right-left and anterior-posterior mass-concentration profiles through each lesion
    centroid (outside the lesion: the mean of its surrounding normal-tissue ring); SVG."""
    ids = sorted(profiles["lesion_id"].unique())[:MAX_LESION_PANELS]
    with rc_context(RC):
        fig, axes = _grid(len(ids))
        for ax, lesion_id in zip(axes, ids, strict=False):
            part = profiles[profiles["lesion_id"] == lesion_id]
            for direction, colour in (("RL", "tab:blue"), ("AP", "tab:orange")):
                line = part[part["direction"] == direction].sort_values("position_mm")
                if line.empty:
                    continue
                inside = line["inside"].astype(str).str.lower() == "true"
                ax.plot(line["position_mm"], line["mass_mg_per_L"], color=colour, lw=1.0,
                        label=f"{direction} (+ = {'R' if direction == 'RL' else 'A'})")
                ax.plot(line["position_mm"][inside], line["mass_mg_per_L"][inside], "o",
                        color=colour, ms=2.5)
            ax.axhline(0.0, color="0.6", lw=0.6)
            ax.set_title(f"{names.get(int(lesion_id), '')} (lesion {lesion_id})")
            ax.set_xlabel("position from centroid, mm")
            ax.set_ylabel("agent, mg/L")
            if lesion_id == ids[0]:
                ax.legend(loc="upper right", frameon=False, fontsize=6)
        fig.suptitle(title + " (dots: inside the lesion; flat parts: ring mean)")
        return svg_markup(fig, prefix)
