"""DICOM RTSTRUCT import: synthetic pydicom MR series + RTSTRUCT with known shapes.

Truth is analytic: every ROI is a stack of regular polygons (discs, rings, pairs) drawn on the
slice planes of the series, so its volume is Σ ± polygon area × slice spacing and its centroid
the area-weighted mean of the polygon centres. The set-up follows
shared/reference/rt-and-lesion-features.md §7 (non-square 200×160 grid with anisotropic pixels,
where platipy, rt-utils and MIRP fail), plus an oblique series.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bids_agquant.cli.import_rtstruct import main as import_main
from bids_agquant.errors import InputError
from bids_agquant.io import process_umask
from bids_agquant.plan import find_contours
from bids_agquant.rtstruct import import_rtstruct, read_dicom_series, read_rtstruct

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
N_VERTICES = 96


# --------------------------------------------------------------------------- DICOM builders
def _ds(values) -> list[str]:
    """DICOM DS strings (at most 16 characters)."""
    return [f"{float(v):.10g}" for v in values]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, then y, then z."""
    a, b, c = np.radians([rx, ry, rz])
    rot_x = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rot_y = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rot_z = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass
class Series:
    """A synthetic single-frame MR series (geometry in LPS mm)."""

    folder: Path
    rows: int
    cols: int
    slices: int
    row_spacing: float  # PixelSpacing[0]: between rows, along the column direction Y
    col_spacing: float  # PixelSpacing[1]: between columns, along the row direction X
    slice_spacing: float
    col_dir: np.ndarray  # X = IOP[:3], direction of increasing column index
    row_dir: np.ndarray  # Y = IOP[3:], direction of increasing row index
    origin: np.ndarray  # ImagePositionPatient of slice 0
    series_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    study_uid: str = field(default_factory=generate_uid)
    sop_uids: list[str] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.col_dir, self.row_dir)

    def point(self, k: int, u, v) -> np.ndarray:
        """LPS mm of in-plane coordinates (u along X, v along Y, mm from the first pixel
        centre) on slice k."""
        u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
        base = self.origin + self.normal * self.slice_spacing * k
        return base + u[..., None] * self.col_dir + v[..., None] * self.row_dir

    def affine_lps(self) -> np.ndarray:
        """(column, row, slice) → LPS mm."""
        affine = np.eye(4)
        affine[:3, 0] = self.col_dir * self.col_spacing
        affine[:3, 1] = self.row_dir * self.row_spacing
        affine[:3, 2] = self.normal * self.slice_spacing
        affine[:3, 3] = self.origin
        return affine

    def dcm2niix_affine_ras(self) -> np.ndarray:
        """RAS affine of a NIfTI of this series stored like dcm2niix: row axis flipped."""
        flip_rows = np.eye(4)
        flip_rows[1, 1], flip_rows[1, 3] = -1.0, self.rows - 1
        return LPS_TO_RAS @ self.affine_lps() @ flip_rows


def write_series(folder: Path, *, rows: int, cols: int, slices: int, pixel_spacing,
                 slice_spacing: float, orientation=None, origin=(0.0, 0.0, 0.0),
                 pixels: np.ndarray | None = None, series: Series | None = None) -> Series:
    """Write an MR series with pydicom; ``pixel_spacing`` = (between rows, between columns).

    Files are written in reverse slice order with shuffled names so the reader must sort by
    position. ``pixels`` (slices, rows, cols) uint16 is optional.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rotation = np.eye(3) if orientation is None else orientation
    geo = series or Series(folder, rows, cols, slices, float(pixel_spacing[0]),
                           float(pixel_spacing[1]), float(slice_spacing), rotation[:, 0].copy(),
                           rotation[:, 1].copy(), np.asarray(origin, dtype=float))
    geo.sop_uids = [generate_uid() for _ in range(slices)]
    for k in reversed(range(slices)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = geo.sop_uids[k]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MR_STORAGE
        ds.SOPInstanceUID = geo.sop_uids[k]
        ds.Modality = "MR"
        ds.PatientID = "RT01"
        ds.StudyInstanceUID = geo.study_uid
        ds.SeriesInstanceUID = geo.series_uid
        ds.FrameOfReferenceUID = geo.frame_uid
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = _ds([*geo.col_dir, *geo.row_dir])
        ds.ImagePositionPatient = _ds(geo.point(k, 0.0, 0.0))
        ds.PixelSpacing = _ds([geo.row_spacing, geo.col_spacing])
        ds.SliceThickness = _ds([geo.slice_spacing])[0]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        plane = (np.full((rows, cols), 100, dtype=np.uint16) if pixels is None
                 else np.ascontiguousarray(pixels[k], dtype=np.uint16))
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"IM{(k * 7919) % 10007:05d}.dcm", enforce_file_format=True)
    return geo


@dataclass
class Disc:
    """A regular polygon (``N_VERTICES``) of radius r mm at (u, v) mm on slice k; sign -1 for
    a hole. ``dz`` moves it off the slice plane (mm along the normal)."""

    k: int
    u: float
    v: float
    r: float
    sign: int = 1
    dz: float = 0.0

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        t = 2 * np.pi * np.arange(N_VERTICES) / N_VERTICES
        if self.sign < 0:
            t = t[::-1]  # holes drawn the other way round, as planning systems do
        return self.u + self.r * np.cos(t), self.v + self.r * np.sin(t)

    @property
    def area(self) -> float:
        return 0.5 * N_VERTICES * self.r ** 2 * math.sin(2 * np.pi / N_VERTICES)

    def lps(self, series: Series) -> np.ndarray:
        return series.point(self.k, *self.uv()) + series.normal * self.dz


@dataclass
class Polygon:
    """Any closed contour on slice k, vertices given in LPS mm."""

    k: int
    points: np.ndarray

    def lps(self, series: Series) -> np.ndarray:
        return self.points


def ring(k_range, u, v, r_out, r_in) -> list[Disc]:
    return [d for k in k_range for d in (Disc(k, u, v, r_out), Disc(k, u, v, r_in, -1))]


def stack(k_range, u, v, r) -> list[Disc]:
    return [Disc(k, u, v, r) for k in k_range]


def write_rtstruct(path: Path, series: Series, rois: dict[str, list[Disc | Polygon]], *,
                   frame_uid: str | None = None, series_uid: str | None = None,
                   empty: tuple[str, ...] = ()) -> str:
    """An RTSTRUCT whose ROIs (numbered 1.. in dict order) are the given polygons; ``empty``
    names ROIs without any contour. Returns its SOPInstanceUID."""
    frame_uid = frame_uid or series.frame_uid
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.PatientID = "RT01"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "PLAN1"

    images = Sequence()
    for uid in series.sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = MR_STORAGE
        item.ReferencedSOPInstanceUID = uid
        images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series_uid or series.series_uid
    ref_series.ContourImageSequence = images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = series.study_uid
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame_uid
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])

    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    ds.RTROIObservationsSequence = Sequence()
    names = list(rois) + list(empty)
    for number, name in enumerate(names, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        if name in rois:
            roi_contour.ContourSequence = Sequence()
            for shape in rois[name]:
                points = shape.lps(series)
                contour = Dataset()
                image = Dataset()
                image.ReferencedSOPClassUID = MR_STORAGE
                image.ReferencedSOPInstanceUID = series.sop_uids[shape.k]
                contour.ContourImageSequence = Sequence([image])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = _ds(points.ravel())
                roi_contour.ContourSequence.append(contour)
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV" if "GTV" in name.upper() else "ORGAN"
        ds.RTROIObservationsSequence.append(observation)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def write_nifti(path: Path, shape, affine_ras: np.ndarray, sidecar: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.zeros(shape, dtype=np.int16), affine_ras).to_filename(path)
    if sidecar is not None:
        Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def iso_grid_covering(series: Series, step: float = 1.0, margin: float = 2.0):
    """An axial RAS grid (voxel ``step`` mm) covering the whole series with a margin, its
    voxel centres not aligned with the series' (as a session's T1w would not be)."""
    corners = [series.point(k, u, v)
               for k in (-0.5, series.slices - 0.5)
               for u in (-series.col_spacing / 2, (series.cols - 0.5) * series.col_spacing)
               for v in (-series.row_spacing / 2, (series.rows - 0.5) * series.row_spacing)]
    ras = np.asarray(corners) * np.array([-1.0, -1.0, 1.0])
    lo, hi = ras.min(axis=0) - margin + 0.37, ras.max(axis=0) + margin
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = lo
    return shape, affine


# --------------------------------------------------------------------------- truth and checks
def analytic(series: Series, discs: list[Disc]) -> tuple[float, np.ndarray]:
    """Volume (mm³) and centroid (RAS mm) of a polygon stack, each slab one slice thick."""
    weights = np.array([d.sign * d.area for d in discs]) * series.slice_spacing
    centres = np.array([series.point(d.k, d.u, d.v) for d in discs]) @ LPS_TO_RAS[:3, :3]
    return float(weights.sum()), (weights[:, None] * centres).sum(axis=0) / weights.sum()


def measured(labels: np.ndarray, affine: np.ndarray, label: int):
    """Volume (mm³), centroid (voxel indices) and voxel count of one label."""
    index = np.argwhere(labels == label)
    volume = len(index) * abs(np.linalg.det(affine[:3, :3]))
    return volume, index.mean(axis=0), len(index)


def _membership(discs: list[Disc], slices: np.ndarray, u: np.ndarray, v: np.ndarray):
    """Analytic XOR membership of in-plane points (u, v mm) on the given slices, and their
    in-plane distance (mm) to the nearest circle of that slice."""
    inside = np.zeros(u.shape, dtype=bool)
    distance = np.full(u.shape, np.inf)
    for disc in discs:
        on = slices == disc.k
        rho = np.hypot(u[on] - disc.u, v[on] - disc.v)
        inside[on] ^= rho < disc.r
        distance[on] = np.minimum(distance[on], np.abs(rho - disc.r))
    return inside, distance


def check_voxels(result, series: Series, rois: dict[str, list[Disc]]) -> int:
    """Every voxel that lies wholly inside or wholly outside an analytic ROI has the right
    label; only voxels that straddle a boundary (partial volume) may go either way.

    A voxel straddles an in-plane boundary when its centre is closer to it than half the
    voxel diagonal, and a slab face when it reaches across it (box half-width along the
    slice normal) to a slice whose membership differs. Returns the number of voxels checked.
    """
    shape = result.labels.shape
    vox_to_lps = LPS_TO_RAS @ result.affine_ras
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    lps = vox_to_lps[:3, :3] @ ijk + vox_to_lps[:3, 3:4]
    cont = np.linalg.inv(series.affine_lps())[:3] @ np.vstack([lps, np.ones(lps.shape[1])])
    u, v = cont[0] * series.col_spacing, cont[1] * series.row_spacing
    k = np.rint(cont[2])
    step = cont[2] - k
    neighbour = k + np.where(step >= 0, 1.0, -1.0)
    to_face = (0.5 - np.abs(step)) * series.slice_spacing
    half_diagonal = 0.5 * np.sqrt((vox_to_lps[:3, :3] ** 2).sum())
    half_width_normal = 0.5 * np.abs(series.normal @ vox_to_lps[:3, :3]).sum()
    expected = np.zeros(u.shape, dtype=int)
    partial = np.zeros(u.shape, dtype=bool)
    names = [roi.name for roi in result.rois]
    for name, discs in rois.items():
        inside, distance = _membership(discs, k, u, v)
        inside_next, distance_next = _membership(discs, neighbour, u, v)
        expected[inside] = names.index(name) + 1
        partial |= distance < half_diagonal
        partial |= (to_face < half_width_normal) & (
            (inside_next != inside) | (distance_next < half_diagonal))
    wrong = (result.labels.ravel() != expected) & ~partial
    assert not wrong.any(), f"{wrong.sum()} whole voxels mislabelled"
    return int((~partial & (expected > 0)).sum())


def check_rois(result, series: Series, rois: dict[str, list[Disc]], report: list | None = None):
    """Volume within 3 % of the analytic volume, centroid within half a voxel on every axis,
    and no whole voxel mislabelled."""
    inverse = np.linalg.inv(result.affine_ras)
    names = [roi.name for roi in result.rois]
    for name, discs in rois.items():
        label = names.index(name) + 1
        volume, centroid, count = measured(result.labels, result.affine_ras, label)
        true_volume, true_centroid_ras = analytic(series, discs)
        true_centroid = inverse[:3, :3] @ true_centroid_ras + inverse[:3, 3]
        error = volume / true_volume - 1.0
        shift = np.abs(centroid - true_centroid)
        if report is not None:
            report.append((name, count, true_volume, volume, error, shift.max()))
        assert abs(error) < 0.03, (name, volume, true_volume)
        assert shift.max() < 0.5, (name, centroid, true_centroid)
    assert check_voxels(result, series, rois) > 0


# --------------------------------------------------------------------------- fixtures
# 200 columns × 160 rows, 0.9 mm between columns and 1.3 mm between rows, 2.5 mm slices: a
# spacing or row/column swap moves or clips every ROI below.
NONSQUARE = {"rows": 160, "cols": 200, "slices": 24, "pixel_spacing": (1.3, 0.9),
             "slice_spacing": 2.5, "origin": (-90.0, -104.0, -30.0)}


def nonsquare_rois() -> dict[str, list[Disc]]:
    return {
        "GTV_ring": ring(range(5, 12), 60.0, 80.0, 15.0, 6.0),  # hole (XOR)
        # Two discs per slice stacked along the rows (where MIRP loses 39 %).
        "GTV_two": stack(range(8, 14), 120.0, 40.0, 8.0) + stack(range(8, 14), 120.0, 100.0, 8.0),
        # 0.25 mm from the first column's outer edge (u = -0.45 mm), on the first slices.
        "GTV_edge": stack(range(0, 3), 9.8, 150.0, 10.0),
        # Column 185 ≥ Rows and row 40: the corner platipy and rt-utils main clip away.
        "GTV_far": stack(range(15, 18), 185 * 0.9, 40 * 1.3, 6.0),
    }


@pytest.fixture(scope="module")
def nonsquare(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonsquare")
    series = write_series(root / "dicom", **NONSQUARE)
    # A second series of the same frame of reference and a non-DICOM file in the folder: the
    # reader must pick the referenced series by UID.
    write_series(root / "dicom" / "other", rows=64, cols=64, slices=3, pixel_spacing=(2, 2),
                 slice_spacing=5.0, origin=(0, 0, 0))
    (root / "dicom" / "README.txt").write_text("not DICOM")
    rois = nonsquare_rois()
    rtstruct = root / "RS.dcm"
    sop_uid = write_rtstruct(rtstruct, series, {**rois, "Brainstem": stack([4], 90, 90, 5)})
    native = write_nifti(root / "series.nii.gz", (series.cols, series.rows, series.slices),
                         series.dcm2niix_affine_ras())
    iso_shape, iso_affine = iso_grid_covering(series)
    iso = write_nifti(root / "iso1mm.nii.gz", iso_shape, iso_affine)
    return {"root": root, "series": series, "rois": rois, "rtstruct": rtstruct,
            "sop_uid": sop_uid, "native": native, "iso": iso}


OBLIQUE = {"rows": 96, "cols": 128, "slices": 20, "pixel_spacing": (1.1, 0.8),
           "slice_spacing": 3.0, "origin": (-50.0, -60.0, -20.0),
           "orientation": _rotation(25.0, -10.0, 20.0)}


def oblique_rois() -> dict[str, list[Disc]]:
    return {"GTV_disc": stack(range(4, 13), 50.0, 50.0, 12.0),
            "GTV_ring": ring(range(8, 15), 80.0, 30.0, 10.0, 4.0)}


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    series = write_series(root / "dicom", **OBLIQUE)
    rois = oblique_rois()
    rtstruct = root / "RS.dcm"
    write_rtstruct(rtstruct, series, rois)
    native = write_nifti(root / "series.nii.gz", (series.cols, series.rows, series.slices),
                         series.dcm2niix_affine_ras())
    iso_shape, iso_affine = iso_grid_covering(series)
    iso = write_nifti(root / "iso1mm.nii.gz", iso_shape, iso_affine)
    return {"root": root, "series": series, "rois": rois, "rtstruct": rtstruct,
            "native": native, "iso": iso}


# --------------------------------------------------------------------------- geometry
def test_series_geometry_follows_pixel_spacing_order(nonsquare):
    """PixelSpacing[0] is the row spacing (along Y), [1] the column spacing (along X)."""
    series = nonsquare["series"]
    grid = read_dicom_series(series.folder, referenced_series=[series.series_uid])
    assert grid.shape == (200, 160, 24)
    assert grid.series_uid == series.series_uid
    np.testing.assert_allclose(grid.spacing_mm, [0.9, 1.3, 2.5])
    np.testing.assert_allclose(grid.affine_lps, series.affine_lps(), atol=1e-6)
    # Pixel (column 185, row 40) of slice 16 is where it was drawn.
    np.testing.assert_allclose(grid.to_index(series.point(16, 185 * 0.9, 40 * 1.3)[None])[0],
                               [185, 40, 16], atol=1e-6)


@pytest.mark.parametrize("target", ["native", "iso"])
def test_nonsquare_anisotropic_volumes_and_centroids(nonsquare, target):
    """Ring with a hole, two contours per slice, lesion at the edge, lesion at a far column,
    on the series' own (dcm2niix-like, row-flipped) grid and on a 1 mm axial grid."""
    result = import_rtstruct(nonsquare["rtstruct"], nonsquare["series"].folder,
                             nonsquare[target])
    assert [roi.name for roi in result.rois] == list(nonsquare["rois"])  # Brainstem left out
    assert result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) == {0, 1, 2, 3, 4}
    check_rois(result, nonsquare["series"], nonsquare["rois"])


def test_ring_hole_is_empty_and_two_contours_are_two_components(nonsquare):
    from scipy import ndimage as ndi

    series = nonsquare["series"]
    result = import_rtstruct(nonsquare["rtstruct"], series.folder, nonsquare["native"])
    inverse = np.linalg.inv(result.affine_ras)
    for k in range(5, 12):
        centre = inverse @ np.append(LPS_TO_RAS[:3, :3] @ series.point(k, 60.0, 80.0), 1.0)
        i, j, kk = np.rint(centre[:3]).astype(int)
        assert result.labels[i, j, kk] == 0  # inside the hole
        ring_point = inverse @ np.append(LPS_TO_RAS[:3, :3] @ series.point(k, 70.0, 80.0), 1)
        i, j, kk = np.rint(ring_point[:3]).astype(int)
        assert result.labels[i, j, kk] == 1  # in the ring, 10 mm from its centre
    _, n_components = ndi.label(result.labels == 2)
    assert n_components == 2


def test_image_series_given_as_nifti(nonsquare):
    """The referenced series as a NIfTI (dcm2niix-like): mapped through its affine."""
    result = import_rtstruct(nonsquare["rtstruct"], nonsquare["native"], nonsquare["iso"])
    assert result.grid.kind == "nifti"
    check_rois(result, nonsquare["series"], nonsquare["rois"])
    assert any("assumed to be the referenced series" in note for note in result.notes)


def test_nifti_series_with_slices_along_its_first_axis(nonsquare, tmp_path):
    """A reoriented NIfTI of the series (slices along axis 0): the slice axis is found from
    the contours."""
    series = nonsquare["series"]
    permuted = series.dcm2niix_affine_ras()[:, [2, 0, 1, 3]]  # voxel (k, i, j)
    nifti = write_nifti(tmp_path / "sagittal_order.nii.gz",
                        (series.slices, series.cols, series.rows), permuted)
    result = import_rtstruct(nonsquare["rtstruct"], nifti, nonsquare["iso"])
    check_rois(result, series, nonsquare["rois"])


def test_contour_image_reference_disagreeing_with_geometry_is_noted(nonsquare, tmp_path):
    """The geometry decides; a ContourImageSequence naming another slice is reported."""
    series = nonsquare["series"]
    disc = Disc(6, 50.0, 50.0, 5.0)
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV1": [Polygon(7, disc.lps(series))]})  # UID of 7
    result = import_rtstruct(rtstruct, series.folder, nonsquare["native"])
    assert any("reference an image other than" in note for note in result.notes)
    check_rois(result, series, {"GTV1": [disc]})


@pytest.mark.parametrize("target", ["native", "iso"])
def test_oblique_series(oblique, target):
    result = import_rtstruct(oblique["rtstruct"], oblique["series"].folder, oblique[target])
    check_rois(result, oblique["series"], oblique["rois"])


def test_oblique_series_given_as_nifti(oblique):
    result = import_rtstruct(oblique["rtstruct"], oblique["native"], oblique["iso"])
    check_rois(result, oblique["series"], oblique["rois"])


def test_roi_patterns_glob_regex_and_order(nonsquare):
    result = import_rtstruct(nonsquare["rtstruct"], nonsquare["series"].folder,
                             nonsquare["native"], patterns=["gtv_far", "re:^brain"])
    assert [roi.name for roi in result.rois] == ["GTV_far", "Brainstem"]  # ROINumber order
    assert set(np.unique(result.labels)) == {0, 1, 2}


def test_structure_set_is_read_with_its_references(nonsquare):
    ss = read_rtstruct(nonsquare["rtstruct"])
    series = nonsquare["series"]
    assert ss.sop_instance_uid == nonsquare["sop_uid"]
    assert ss.referenced_series_uids == (series.series_uid,)
    assert ss.frame_of_reference_uids == (series.frame_uid,)
    assert [r.name for r in ss.rois] == [*nonsquare["rois"], "Brainstem"]
    assert len(ss.rois[0].contours) == 14  # 7 slices × (outer + hole)


# --------------------------------------------------------------------------- errors
def _expect_error(code: int, match: str, *args, **kwargs):
    with pytest.raises(InputError, match=match) as exc:
        import_rtstruct(*args, **kwargs)
    assert exc.value.exit_code == code
    return exc.value


def test_contour_outside_the_image_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV_cut": stack([3], 5.0, 150.0, 10.0)})
    _expect_error(65, "GTV_cut.*outside the image", rtstruct, series.folder, nonsquare["native"])


def test_contour_beyond_the_last_slice_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV_low": [Disc(0, 50, 50, 5, dz=-2.5)]})
    _expect_error(65, "GTV_low.*outside the image", rtstruct, series.folder, nonsquare["native"])


def test_contour_between_slices_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV_off": [Disc(6, 50, 50, 5, dz=1.0)]})
    _expect_error(65, "GTV_off.*1.00 mm from the nearest slice", rtstruct, series.folder,
                  nonsquare["native"])


def test_roi_without_contours_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV1": stack([6], 50, 50, 5)}, empty=("GTV2",))
    _expect_error(65, "GTV2.*no closed planar contour", rtstruct, series.folder,
                  nonsquare["native"])


def test_roi_smaller_than_a_sample_rasterises_to_nothing(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV_speck": stack([6], 50.05, 50.05, 0.04)})
    _expect_error(65, "GTV_speck.*rasterises to nothing", rtstruct, series.folder,
                  nonsquare["native"])


def test_roi_below_half_a_target_voxel_rasterises_to_nothing(nonsquare, tmp_path):
    """Present on the planning grid (0.31 mm³), but less than half a 1 mm³ target voxel."""
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV_small": stack([6], 50.0, 50.0, 0.2)})
    _expect_error(65, "GTV_small.*rasterises to no voxel", rtstruct, series.folder,
                  nonsquare["iso"])


def test_no_matching_roi_lists_the_names(nonsquare):
    _expect_error(66, "no ROI matches.*'GTV_ring'.*'Brainstem'", nonsquare["rtstruct"],
                  nonsquare["series"].folder, nonsquare["native"], patterns=["*CTV*"])


def test_frame_of_reference_mismatch_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV1": stack([6], 50, 50, 5)}, frame_uid=generate_uid())
    _expect_error(65, "frame of reference", rtstruct, series.folder, nonsquare["native"])


def test_referenced_series_missing_from_folder_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV1": stack([6], 50, 50, 5)},
                   series_uid=generate_uid())
    _expect_error(65, "references series", rtstruct, series.folder, nonsquare["native"])


def test_nifti_with_fewer_slices_than_the_series_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    cropped = write_nifti(tmp_path / "cropped.nii.gz", (series.cols, series.rows, 20),
                          series.dcm2niix_affine_ras())
    _expect_error(65, "20 slices.*lists 24 images", nonsquare["rtstruct"], cropped,
                  nonsquare["iso"])


def test_nifti_sidecar_of_another_series_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    other = write_nifti(tmp_path / "other.nii.gz", (series.cols, series.rows, series.slices),
                        series.dcm2niix_affine_ras(), {"SeriesInstanceUID": generate_uid()})
    _expect_error(65, "sidecar names series", nonsquare["rtstruct"], other, nonsquare["iso"])


def test_target_in_another_frame_of_reference_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    target = write_nifti(tmp_path / "t1w.nii.gz", (series.cols, series.rows, series.slices),
                         series.dcm2niix_affine_ras(), {"FrameOfReferenceUID": generate_uid()})
    _expect_error(65, "registration, not a regrid", nonsquare["rtstruct"], series.folder, target)


def test_roi_outside_the_target_image_is_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    shape, affine = iso_grid_covering(series)
    small = write_nifti(tmp_path / "small.nii.gz", (shape[0] // 2, shape[1], shape[2]), affine)
    _expect_error(65, "extends outside this image", nonsquare["rtstruct"], series.folder, small)


def test_nested_rois_are_an_error(nonsquare, tmp_path):
    series = nonsquare["series"]
    rtstruct = tmp_path / "RS.dcm"
    write_rtstruct(rtstruct, series, {"GTV1": stack(range(5, 8), 50, 50, 5),
                                      "GTV_total": stack(range(4, 9), 50, 50, 12)})
    _expect_error(65, "'GTV1' and 'GTV_total' overlap", rtstruct, series.folder,
                  nonsquare["native"])


def test_not_an_rtstruct_and_missing_file(nonsquare, tmp_path):
    series = nonsquare["series"]
    an_image = sorted(series.folder.glob("IM*.dcm"))[0]
    _expect_error(65, "not an RTSTRUCT", an_image, series.folder, nonsquare["native"])
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 300)
    _expect_error(65, "not a DICOM file", tmp_path / "junk.dcm", series.folder,
                  nonsquare["native"])
    _expect_error(66, "not found", tmp_path / "absent.dcm", series.folder, nonsquare["native"])


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def small_bids(nonsquare, tmp_path):
    """A raw BIDS dataset whose sub-01 ses-01 T1w is the non-square series (on the 1 mm
    grid); the RTSTRUCT and the DICOM series are kept in sourcedata/."""
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "rt", "BIDSVersion": "1.10.0"}))
    shutil.copy(nonsquare["iso"], anat / "sub-01_ses-01_T1w.nii.gz")
    source = bids / "sourcedata" / "sub-01"
    shutil.copytree(nonsquare["series"].folder, source / "mr")
    shutil.copy(nonsquare["rtstruct"], source / "RS.dcm")
    return bids


def _cli(bids: Path, *extra: str) -> int:
    source = bids / "sourcedata" / "sub-01"
    return import_main([str(source / "RS.dcm"), "--image-series", str(source / "mr"),
                        "--bids-dir", str(bids), "--participant-label", "sub-01",
                        "--session-label", "01", *extra])


def test_cli_writes_the_contours_dataset_the_pipeline_reads(small_bids, nonsquare):
    assert _cli(small_bids) == 0
    out = small_bids / "derivatives" / "contours"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids-agquant-import-rtstruct"
    contours = find_contours(out, "01")
    assert contours is not None and contours.kind == "dseg" and contours.session == "01"
    assert contours.file.name == "sub-01_ses-01_desc-GTV_dseg.nii.gz"
    table = pd.read_csv(contours.names_tsv, sep="\t")
    assert list(table.columns) == ["index", "name"]
    assert list(table["name"]) == list(nonsquare["rois"])
    assert list(table["index"]) == [1, 2, 3, 4]
    img = nb.load(contours.file)
    target = nb.load(small_bids / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz")
    np.testing.assert_array_equal(img.affine, target.affine)
    assert img.shape == target.shape and img.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(img.dataobj))) == {0, 1, 2, 3, 4}
    sidecar = json.loads(contours.file.with_name(
        "sub-01_ses-01_desc-GTV_dseg.json").read_text())
    series = nonsquare["series"]
    assert sidecar["SpatialReference"] == "bids:raw:sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz"
    assert f"urn:oid:{nonsquare['sop_uid']}" in sidecar["Sources"]
    assert "bids:raw:sourcedata/sub-01/RS.dcm" in sidecar["Sources"]
    assert sidecar["RTStructSOPInstanceUID"] == nonsquare["sop_uid"]
    assert sidecar["ReferencedSeriesInstanceUID"] == series.series_uid
    assert sidecar["FrameOfReferenceUID"] == series.frame_uid
    assert [r["ROIName"] for r in sidecar["ROIs"]] == list(nonsquare["rois"])
    assert [r["ROINumber"] for r in sidecar["ROIs"]] == [1, 2, 3, 4]
    assert "even-odd" in sidecar["RasterisationMethod"]


def test_cli_refuses_to_overwrite_without_the_flag(small_bids):
    assert _cli(small_bids) == 0
    assert _cli(small_bids) == 73
    assert _cli(small_bids, "--overwrite") == 0


def test_cli_dseg_keeps_the_target_header_geometry(small_bids):
    """The label map carries the target's qform and sform, codes included: written with
    distinct codes (a swap or a reset to nibabel's defaults would show)."""
    t1w = small_bids / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz"
    original = nb.load(t1w)
    target = nb.Nifti1Image(np.asarray(original.dataobj), original.affine)
    target.set_qform(original.affine, code=1)  # scanner
    target.set_sform(original.affine, code=2)  # aligned
    target.to_filename(t1w)
    target = nb.load(t1w)
    assert _cli(small_bids) == 0
    dseg = nb.load(small_bids / "derivatives" / "contours" / "sub-01" / "ses-01" / "anat"
                   / "sub-01_ses-01_desc-GTV_dseg.nii.gz")
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "srow_x", "srow_y", "srow_z"):
        np.testing.assert_array_equal(dseg.header[key], target.header[key], err_msg=key)
    assert (int(dseg.header["qform_code"]), int(dseg.header["sform_code"])) == (1, 2)
    np.testing.assert_array_equal(dseg.get_qform(), target.get_qform())
    np.testing.assert_array_equal(dseg.get_sform(), target.get_sform())
    np.testing.assert_array_equal(dseg.affine, target.affine)
    labels = np.asarray(dseg.dataobj)
    assert dseg.get_data_dtype() == np.uint8 and dseg.header.get_intent()[0] == "label"
    assert dseg.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    assert float(dseg.header["cal_min"]) == 0 and float(dseg.header["cal_max"]) == labels.max()
    assert dseg.header["descrip"].tobytes().rstrip(b"\0") == b"GTV labels from RTSTRUCT"


def test_cli_files_get_normal_permissions(small_bids):
    """The dseg, its TSV and JSON (and the dataset description) are 0666 minus the umask,
    like any other new file: not the 0600 of a temporary file renamed into place."""
    old_umask = os.umask(0o027)  # not the usual 0o022: a hard-coded 0o644 would fail too
    process_umask.cache_clear()  # read once and cached: make it see this umask
    try:
        assert _cli(small_bids) == 0
    finally:
        os.umask(old_umask)
        process_umask.cache_clear()
    out = small_bids / "derivatives" / "contours"
    anat = out / "sub-01" / "ses-01" / "anat"
    written = [anat / f"sub-01_ses-01_desc-GTV_dseg.{ext}" for ext in ("nii.gz", "tsv", "json")]
    for path in [*written, out / "dataset_description.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o027 == 0o640, path
    assert not [p for p in anat.iterdir() if p.name.startswith(".")]  # no temporary left


def test_cli_exit_codes(small_bids, nonsquare, tmp_path):
    # Output inside the raw dataset, not under derivatives/: usage error.
    assert _cli(small_bids, "--output", str(small_bids / "sub-01" / "contours")) == 64
    # The participant has sessions: the session is required.
    source = small_bids / "sourcedata" / "sub-01"
    assert import_main([str(source / "RS.dcm"), "--image-series", str(source / "mr"),
                        "--bids-dir", str(small_bids), "--participant-label", "01"]) == 64
    assert _cli(small_bids, "--session-label", "02") == 66  # no such session
    assert _cli(small_bids, "--bids-dir", str(tmp_path)) == 66  # not a BIDS dataset
    assert _cli(small_bids, "--roi", "*CTV*") == 66
    assert _cli(small_bids, "--roi", "re:(") == 64
    # No T1w with that ce- entity.
    assert _cli(small_bids, "--ce", "gadoterate") == 66
    with pytest.raises(SystemExit) as exc:  # missing required option
        import_main([str(source / "RS.dcm"), "--bids-dir", str(small_bids)])
    assert exc.value.code == 64
    # A contour outside the referenced image (copied series, same UIDs): bad data, and
    # nothing written.
    bad = tmp_path / "bad.dcm"
    write_rtstruct(bad, nonsquare["series"], {"GTV_cut": stack([3], 5.0, 150.0, 10.0)})
    code = import_main([str(bad), "--image-series", str(source / "mr"), "--bids-dir",
                        str(small_bids), "--participant-label", "01", "--session-label", "01",
                        "--output", str(tmp_path / "contours")])
    assert code == 65
    assert not list((tmp_path / "contours").rglob("*_dseg.*"))


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("bids-agquant-import-rtstruct")
    if not script.exists():
        pytest.skip("package not installed in this environment (pip install -e .)")
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    proc = subprocess.run([str(script), str(tmp_path / "absent.dcm"), "--image-series",
                           str(tmp_path), "--bids-dir", str(bids), "--participant-label", "01",
                           "--target-image", str(tmp_path / "absent.nii.gz")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 66, proc.stderr
    assert "absent.nii.gz: target image not found" in proc.stderr


# --------------------------------------------------------------------------- pipeline
def _series_from_nifti(path: Path, folder: Path) -> Series:
    """The NIfTI written as a DICOM series with the usual axial IOP [1,0,0, 0,1,0]: columns
    run right→left and rows anterior→posterior, i.e. both NIfTI in-plane axes reversed."""
    img = nb.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    ni, nj, nk = data.shape
    voxel = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    assert np.allclose(img.affine[:3, :3], np.diag(voxel)), "expects an axis-aligned RAS image"
    origin_lps = (LPS_TO_RAS @ img.affine @ [ni - 1, nj - 1, 0, 1])[:3]
    scaled = np.rint(4000.0 * data / max(float(data.max()), 1e-9)).clip(0, 65535)
    # pixel[row r, column c] of slice k = data[ni-1-c, nj-1-r, k]
    pixels = np.stack([scaled[::-1, ::-1, k].T for k in range(nk)])
    return write_series(folder, rows=nj, cols=ni, slices=nk,
                        pixel_spacing=(voxel[1], voxel[0]), slice_spacing=voxel[2],
                        origin=origin_lps, pixels=pixels)


def _ellipsoid_sections(series: Series, center, semi_axes, rotation, n_points=128):
    """Cross-sections of an ellipsoid (object = scanner RAS mm; columns of ``rotation`` are its
    axes) with the axial slice planes of ``series``, as LPS polygons."""
    center, semi_axes, rotation = (np.asarray(a, dtype=float) for a in
                                   (center, semi_axes, rotation))
    quad = rotation @ np.diag(1.0 / semi_axes ** 2) @ rotation.T
    quad_xy, cross, quad_zz = quad[:2, :2], quad[:2, 2], quad[2, 2]
    inv_xy = np.linalg.inv(quad_xy)
    eigval, eigvec = np.linalg.eigh(quad_xy)
    theta = 2 * np.pi * np.arange(n_points) / n_points
    circle = np.vstack([np.cos(theta), np.sin(theta)])
    sections = []
    for k in range(series.slices):
        z = series.point(k, 0.0, 0.0)[2]  # axial: LPS z = RAS z
        t = z - center[2]
        scale = 1.0 - t * t * (quad_zz - cross @ inv_xy @ cross)
        if scale <= 0:
            continue
        middle = center[:2] - t * inv_xy @ cross
        xy = middle[:, None] + eigvec @ (np.sqrt(scale / eigval)[:, None] * circle)
        ras = np.vstack([xy, np.full(n_points, z)]).T
        sections.append(Polygon(k, ras * np.array([-1.0, -1.0, 1.0])))
    return sections


def _lesions(out: Path, label: str = "ses-D1") -> pd.DataFrame:
    anat = out / "sub-01" / label / "anat"
    tables = [pd.read_csv(anat / f"sub-01_{label}_desc-{m}_lesions.tsv", sep="\t")
              for m in ("vfa", "mp2rage") if (anat / f"sub-01_{label}_desc-{m}_lesions.tsv")
              .exists()]
    return pd.concat(tables).set_index(["t1_method", "lesion_id"]).sort_index()


@pytest.mark.slow
def test_imported_contours_reproduce_the_pipeline_results(dro2mm, tmp_path):
    """D0 T1w of the reference dataset → DICOM series; its analytic lesion ellipsoids → an
    RTSTRUCT; imported; the participant run gives the per-lesion results of the dataset's own
    contours (which are the same ellipsoids sampled at voxel centres)."""
    from bids_agquant.cli.run import main as run_main

    t1w = dro2mm.bids_dir / "sub-01" / "ses-D0" / "anat" / "sub-01_ses-D0_T1w.nii.gz"
    series = _series_from_nifti(t1w, tmp_path / "dicom")
    reference = nb.load(t1w)
    # Same space, in-plane axes reversed (as a scanner's axial series is against a RAS NIfTI).
    reverse = np.diag([-1.0, -1.0, 1.0, 1.0])
    reverse[:2, 3] = np.asarray(reference.shape[:2]) - 1
    grid = read_dicom_series(series.folder)
    np.testing.assert_allclose(grid.affine_ras, reference.affine @ reverse, atol=1e-6)
    truth = json.loads((dro2mm.truth_dir / "truth.json").read_text())
    lesions = truth["participants_detail"]["sub-01"]["lesions"]
    rois = {f"GTV{les['label']}": _ellipsoid_sections(series, les["center_mm"],
                                                      les["semi_axes_mm"], les["axes_rotation"])
            for les in lesions}
    rois["Brainstem"] = stack([40], 90.0, 110.0, 6.0)  # not a GTV: must not be imported
    write_rtstruct(tmp_path / "RS.dcm", series, rois)
    imported = tmp_path / "contours"
    assert import_main([str(tmp_path / "RS.dcm"), "--image-series", str(series.folder),
                        "--bids-dir", str(dro2mm.bids_dir), "--participant-label", "01",
                        "--session-label", "D0", "--output", str(imported)]) == 0

    # The label maps agree but for voxels that straddle the ellipsoid surface.
    original_img = nb.load(dro2mm.contours_dir / "sub-01" / "ses-D0" / "anat"
                           / "sub-01_ses-D0_desc-GTV_dseg.nii.gz")
    original = np.asarray(original_img.dataobj)
    new = np.asarray(nb.load(imported / "sub-01" / "ses-D0" / "anat"
                             / "sub-01_ses-D0_desc-GTV_dseg.nii.gz").dataobj)
    assert sorted(np.unique(new)) == sorted(np.unique(original)) == [0, 1, 2, 3]
    ijk = np.indices(original.shape).reshape(3, -1)
    ras = reference.affine[:3, :3] @ ijk + reference.affine[:3, 3:4]
    half_diagonal = 0.5 * np.sqrt((reference.affine[:3, :3] ** 2).sum())
    partial = np.zeros(original.size, dtype=bool)
    for les in lesions:
        local = np.asarray(les["axes_rotation"]).T @ (ras - np.asarray(les["center_mm"])[:, None])
        rho = np.sqrt(((local / np.asarray(les["semi_axes_mm"])[:, None]) ** 2).sum(axis=0))
        # Distance to the surface is at least |rho - 1| times the shortest semi-axis.
        partial |= np.abs(rho - 1.0) * min(les["semi_axes_mm"]) < half_diagonal
    differ = original.ravel() != new.ravel()
    assert not (differ & ~partial).any()

    runs = {}
    work = tmp_path / "work"  # shared: the second run only redoes the contour-dependent steps
    for name, contours in (("original", dro2mm.contours_dir), ("imported", imported)):
        out = tmp_path / f"out-{name}"
        code = run_main([str(dro2mm.bids_dir), str(out), "participant", "--participant-label",
                         "01", "--session-label", "D1", "--contours", str(contours),
                         "--skip-bids-validation", "-w", str(work), "--sloppy"])
        assert code == 0
        runs[name] = _lesions(out)
    truth = pd.read_csv(dro2mm.truth_dir / "lesions.tsv", sep="\t")
    truth = truth[(truth["participant_id"] == "sub-01") & (truth["timepoint"] == "ses-D1")]
    true_gd = dict(zip(truth["lesion_id"], truth["gd_mM_mean"], strict=True))
    original_tab, imported_tab = runs["original"], runs["imported"]
    assert list(imported_tab.index) == list(original_tab.index)
    assert {label for _method, label in original_tab.index} == {1, 2, 3}
    for key, row in original_tab.iterrows():
        new_row = imported_tab.loc[key]
        label = key[1]
        assert new_row["n_voxels"] == (new == label).sum(), key  # the imported map, unchanged
        assert row["n_voxels"] == (original == label).sum(), key
        band = int((partial & ((original.ravel() == label) | (new.ravel() == label))).sum())
        assert abs(new_row["n_voxels"] - row["n_voxels"]) <= band, key
        # Same mean Gd as with the dataset's own contours, and as accurate against the truth
        # (test_end_to_end's criterion).
        assert abs(new_row["gd_mM_mean"] - row["gd_mM_mean"]) <= max(
            0.005, 0.05 * abs(row["gd_mM_mean"])), (key, new_row["gd_mM_mean"], row["gd_mM_mean"])
        assert abs(new_row["gd_mM_mean"] - true_gd[label]) <= max(0.005, 0.10 * true_gd[label])
