"""Per-lesion geometry and intensity statistics, and the lesion-table data dictionary.

Pure functions on numpy arrays (a 3-D integer label image, its 4x4 voxel-to-world affine and
parameter maps on the same grid); no file I/O.

Geometry definitions (all physical, computed through the affine, so anisotropic and oblique
grids are handled):

* ``volume_ml`` = ``n_voxels · |det(affine[:3, :3])|`` mm³ / 1000.
* ``equiv_diameter_mm`` = diameter of the sphere of the same volume, ``(6V/π)^(1/3)`` with V in
  mm³.
* ``longest_diameter_mm`` = maximum 3-D Feret (caliper) diameter, i.e. the largest distance
  between two **voxel centres** of the lesion. Because it is measured between centres it
  underestimates the physical extent of the voxelised object by about one voxel (a
  20-voxel-wide sphere gives ≈ 19.9 mm at 1 mm; mesh-based tools report ≈ 20.8 mm). A single
  voxel gives 0.0. It is a 3-D diameter.
* ``longest_axial_diameter_mm`` = the RECIST 1.1 / RANO-BM measure: the largest in-plane
  Feret diameter over the axial slices (the voxel axis most aligned with the world
  superior axis defines the slices), voxel centres, distances in mm.
* ``measurable`` = ``longest_diameter_mm >= measurable_threshold_mm`` (inclusive; a tolerance
  of 1e-6 mm absorbs floating-point rounding of the affine).
* ``centroid_{x,y,z}_mm`` = mean of the voxel-centre world coordinates (the NIfTI
  scanner/world frame of the affine, RAS+ for NIfTI).

Modules (everything is re-exported here; import from ``bids_agquant.lesions``):

* :mod:`.geometry` -- volume, equivalent diameter, Feret / RECIST diameters, centroid;
* :mod:`.intensity` -- per-map statistics and the concentration-distribution features;
* :mod:`.quality` -- limit of quantification, healthy-tissue control regions and the
  quantification / control-failure / normal-tissue SE rules;
* :mod:`.profiles` -- line profiles through the lesion centroids;
* :mod:`.persistence` -- late / early ratios between two timepoints;
* :mod:`.dictionary` -- BIDS data dictionaries of the table columns;
* :mod:`.tables` -- the lesion, control and profile tables of one timepoint, and the label
  map from a contour image.
"""

# Re-exports use the redundant ``name as name`` form: they are the package's interface (the
# adapters, reports and tests import them from here) but not all of them are in ``__all__``,
# which is kept as it was for ``from bids_agquant.lesions import *``.
from .dictionary import PERSISTENCE_DICTIONARY as PERSISTENCE_DICTIONARY
from .dictionary import PROFILE_DICTIONARY as PROFILE_DICTIONARY
from .dictionary import column_dictionary as column_dictionary
from .dictionary import control_dictionary as control_dictionary
from .dictionary import persistence_dictionary as persistence_dictionary
from .geometry import GEOMETRY_COLUMNS as GEOMETRY_COLUMNS
from .geometry import MEASURABLE_TOLERANCE_MM as MEASURABLE_TOLERANCE_MM
from .geometry import lesion_geometry as lesion_geometry
from .intensity import ENTROPY_BIN_WIDTH_MM as ENTROPY_BIN_WIDTH_MM
from .intensity import NEGATIVE_FRACTION_MAP as NEGATIVE_FRACTION_MAP
from .intensity import STAT_SUFFIXES as STAT_SUFFIXES
from .intensity import VOLUME_BIN_EDGES_MG_PER_L as VOLUME_BIN_EDGES_MG_PER_L
from .intensity import lesion_concentration_features as lesion_concentration_features
from .intensity import lesion_intensity_stats as lesion_intensity_stats
from .persistence import persistence_table as persistence_table
from .profiles import line_profiles as line_profiles
from .quality import BELOW_LOQ as BELOW_LOQ
from .quality import CONTROL_SE_TOLERANCE_PERCENT as CONTROL_SE_TOLERANCE_PERCENT
from .quality import LOD_K as LOD_K
from .quality import LOQ_K as LOQ_K
from .quality import NORMAL_TISSUE_MARGIN_VOXELS as NORMAL_TISSUE_MARGIN_VOXELS
from .quality import NOT_ASSESSED as NOT_ASSESSED
from .quality import QUANTIFIED as QUANTIFIED
from .quality import control_failed as control_failed
from .quality import control_rois as control_rois
from .quality import limit_of_quantification as limit_of_quantification
from .quality import normal_tissue_enhancement as normal_tissue_enhancement
from .quality import quantification_labels as quantification_labels
from .tables import labels_from_contours as labels_from_contours
from .tables import lesion_table as lesion_table
from .tables import uptake_tables as uptake_tables

__all__ = [
    "column_dictionary",
    "control_rois",
    "limit_of_quantification",
    "line_profiles",
    "persistence_table",
    "lesion_concentration_features",
    "lesion_geometry",
    "lesion_intensity_stats",
    "lesion_table",
]
