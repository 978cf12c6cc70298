"""DICOM RTSTRUCT → GTV label map on the grid of a BIDS image.

How it works
------------
1. :func:`read_rtstruct` reads the structure set with pydicom ≥ 3: ROI numbers and names, each
   ROI's frame of reference and its contours (``ContourData``: x, y, z triplets in **DICOM
   patient coordinates, LPS mm**: +x towards the patient's left, +y posterior, +z head).
2. :func:`read_dicom_series` (a DICOM folder) or :func:`read_nifti_grid` (a NIfTI of that same
   series) gives the geometry of the image the contours were drawn on, as a voxel → LPS matrix.
   Only the geometry is read; pixel data are never needed.
3. :func:`rasterise_roi` maps every vertex to *continuous* voxel indices of that grid (no
   rounding), checks that each contour lies in one slice plane (tolerance: a fraction of the
   slice spacing) and inside the image, and fills the polygons of each slice with the
   **even–odd rule over all of that slice's edges**, which is the XOR of the polygons: holes
   and several contours per slice work. Each pixel is sampled ``supersampling``² times, giving
   the fraction of the pixel inside the ROI. Each contour stands for a slab of one slice
   spacing, so the ROI volume is Σ(area) × slice spacing.
4. :func:`resample_fractions` resamples each ROI's fraction map onto the target BIDS image in
   physical space (target voxel → RAS → LPS → planning voxel; trilinear, the map being 0 but
   still interpolated beyond the planning image's edges). :func:`label_map` then keeps, per
   ROI, the N voxels of largest fraction, N being the ROI's volume over the target voxel
   volume (rounded): a per-ROI inclusion threshold near 0.5 that preserves the volume; a voxel
   kept by several ROIs goes to the one covering most of it (one-hot linear + argmax, as the
   "generic label" interpolators do). Arrays are never copied between grids.

The traps the public converters fall into (``shared/reference/rt-and-lesion-features.md`` §1)
and how they are avoided here:

* ``ImageOrientationPatient`` = [X, Y]: X is the direction of increasing **column** index
  (along a row), Y that of increasing **row** index. ``PixelSpacing`` = [Δrow, Δcolumn]: its
  *first* value is the distance between rows, i.e. the step along Y, the *second* value. So
  voxel (c, r, k) sits at ``IPP₀ + X·PixelSpacing[1]·c + Y·PixelSpacing[0]·r + n·Δs·k``
  (rt-utils 1.2.7 swaps the spacings).
* Grids are indexed (i, j, k) = (column, row, slice), like nibabel, whereas pydicom's
  ``pixel_array`` is (row, column); no pixel array is used, so no transposition can be missed
  (platipy passes x as the row argument of ``skimage.draw.polygon`` and clips columns ≥ Rows).
* NIfTI affines are RAS; DICOM is LPS: ``LPS = diag(-1, -1, 1) · RAS``, applied explicitly.
* The slice of a contour is found from *all* its vertices in physical space (not from the
  first vertex, nor from ``ContourImageSequence`` UIDs alone), so oblique series work and a
  contour between slices is an error, not a silently empty or misplaced mask.
* Anything outside the referenced image or the target image, an ROI without contours and an
  ROI that rasterises to no voxel raise :class:`~bids_agquant.errors.InputError` (exit 65):
  there is never a silently empty or truncated mask.

Modules
-------
:mod:`.model`
    The data objects (:class:`StructureSet`, :class:`ROI`, :class:`Contour`, :class:`ImageGrid`)
    and the LPS ↔ RAS matrix.
:mod:`.dicom`
    :func:`read_rtstruct` and :func:`read_dicom_series` (pydicom, headers only).
:mod:`.nifti`
    :func:`read_nifti_grid`, and the target image and its sidecar.
:mod:`.geometry`
    Slice axis and slice planes of the contours; checks of frames of reference, referenced
    series and extent.
:mod:`.rasterise`
    Even–odd fill with supersampling, resampling onto the target, label map, overlaps.
:mod:`.importer`
    :func:`import_rtstruct` and :class:`ImportResult`: the steps above in order.
"""

from .dicom import RTSTRUCT_SOP_CLASS, read_dicom_series, read_rtstruct
from .geometry import EDGE_TOLERANCE_VOXELS, find_slice_axis
from .importer import (
    DEFAULT_PATTERNS,
    ImportResult,
    import_rtstruct,
    load_referenced_grid,
    select_rois,
)
from .model import CLOSED_TYPES, LPS_TO_RAS, ROI, Contour, ImageGrid, StructureSet
from .nifti import read_nifti_grid
from .rasterise import RASTERISATION_METHOD, label_map, rasterise_roi, resample_fractions

__all__ = [
    "CLOSED_TYPES",
    "DEFAULT_PATTERNS",
    "EDGE_TOLERANCE_VOXELS",
    "LPS_TO_RAS",
    "RASTERISATION_METHOD",
    "ROI",
    "RTSTRUCT_SOP_CLASS",
    "Contour",
    "ImageGrid",
    "ImportResult",
    "StructureSet",
    "find_slice_axis",
    "import_rtstruct",
    "label_map",
    "load_referenced_grid",
    "rasterise_roi",
    "read_dicom_series",
    "read_nifti_grid",
    "read_rtstruct",
    "resample_fractions",
    "select_rois",
]
