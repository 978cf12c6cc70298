"""``bids-agquant-import-rtstruct``: GTVs of a DICOM RTSTRUCT → the contours derivatives dataset.

Writes ``sub-<id>/[ses-<label>/]anat/sub-<id>[_ses-<label>][_ce-<x>]_desc-GTV_dseg.nii.gz``
(labels 1..N, one per selected ROI, on the grid of the session's image), its ``_dseg.tsv``
(``index``, ``name``) and JSON sidecar, and the dataset's ``dataset_description.json`` when it
has none: the layout ``bids-agquant --contours`` reads (DESIGN.md §4).

Exit codes (DESIGN.md §7): 0 ok; 64 usage; 65 bad data (unreadable or mismatched files,
contours outside the image, empty or nested ROIs); 66 missing input (file, image or ROI);
73 cannot create output (including an existing contour file without ``--overwrite``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

from .. import __version__
from ..derivatives import bids_uri
from ..errors import EX_CANTCREAT, EX_NOINPUT, EX_USAGE, InputError
from ..io import atomic_write_text, is_inside, save_nifti
from ..rtstruct import DEFAULT_PATTERNS, RASTERISATION_METHOD, ImportResult, import_rtstruct
from .parser import BIDSAppParser, bids_label

LOGGER = logging.getLogger("bids_agquant")
PROG = "bids-agquant-import-rtstruct"


def build_parser() -> BIDSAppParser:
    """The command-line parser of ``bids-agquant-import-rtstruct`` (usage errors exit 64).

    Returns
    -------
    BIDSAppParser
    """
    parser = BIDSAppParser(
        prog=PROG,
        description="Rasterise the GTVs of a DICOM RTSTRUCT onto a BIDS session image and write "
                    "them as a contours derivatives dataset for bids-agquant (--contours).",
    )
    parser.add_argument("rtstruct", type=Path, help="the RTSTRUCT file")
    parser.add_argument("--image-series", type=Path, required=True, metavar="DIR_OR_NIFTI",
                        help="the image series the contours were drawn on: its DICOM folder, "
                             "or a NIfTI conversion of that very series (e.g. dcm2niix)")
    parser.add_argument("--bids-dir", type=Path, required=True, help="raw BIDS dataset")
    parser.add_argument("--participant-label", "--participant_label", required=True,
                        type=bids_label("sub-"), metavar="LABEL", help="'sub-' is optional")
    parser.add_argument("--session-label", "--session_label", type=bids_label("ses-"),
                        default=None, metavar="LABEL",
                        help="session whose scanner space the contours are in ('ses-' is "
                             "optional); required when the participant has sessions")
    parser.add_argument("--ce", default=None, metavar="LABEL",
                        help="ce- entity of the target image and of the contour file")
    parser.add_argument("--target-image", type=Path, default=None, metavar="NIFTI",
                        help="image of that session whose grid the labels are written on "
                             "(default: the session's T1w)")
    parser.add_argument("--roi", nargs="+", default=list(DEFAULT_PATTERNS), metavar="PATTERN",
                        help="ROI names to import: case-insensitive globs, or regular "
                             "expressions prefixed with 're:' (default: '*GTV*'); labels follow "
                             "ROINumber")
    parser.add_argument("--output", type=Path, default=None, metavar="DIR",
                        help="contours derivatives dataset (default: "
                             "BIDS_DIR/derivatives/contours)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing contour file of this participant/session")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


# --------------------------------------------------------------------------- paths
def _stem(participant: str, session: str | None, ce: str | None) -> str:
    parts = [f"sub-{participant}"]
    if session:
        parts.append(f"ses-{session}")
    if ce:
        parts.append(f"ce-{ce}")
    return "_".join(parts)


def _session_dir(bids_dir: Path, participant: str, session: str | None) -> Path:
    subject_dir = bids_dir / f"sub-{participant}"
    if not subject_dir.is_dir():
        raise InputError(f"{subject_dir}: participant not found", EX_NOINPUT)
    sessions = sorted(p.name for p in subject_dir.glob("ses-*") if p.is_dir())
    if session is None:
        if sessions:
            raise InputError(f"{subject_dir}: has sessions ({', '.join(sessions)}); say which "
                             "one the contours belong to with --session-label", EX_USAGE)
        return subject_dir
    folder = subject_dir / f"ses-{session}"
    if not folder.is_dir():
        raise InputError(f"{folder}: session not found", EX_NOINPUT)
    return folder


def find_target_image(bids_dir: Path, participant: str, session: str | None,
                      ce: str | None = None) -> Path:
    """The session's T1w image (with ``ce-<ce>`` when given, else without any ``ce-``).

    Raises
    ------
    InputError
        66 when there is none, 64 when several match (choose with ``--target-image``).
    """
    anat = _session_dir(bids_dir, participant, session) / "anat"
    prefix = _stem(participant, session, None)
    found = []
    for path in sorted(anat.glob(f"{prefix}_*T1w.nii*")):
        if not re.search(r"_T1w\.nii(\.gz)?$", path.name):
            continue
        match = re.search(r"_ce-([A-Za-z0-9]+)_", path.name)
        if (match.group(1) if match else None) == ce:
            found.append(path)
    what = f"{prefix}{f'_ce-{ce}' if ce else ''} *_T1w.nii[.gz]"
    if not found:
        raise InputError(f"{anat}: no {what}; pass --target-image", EX_NOINPUT)
    if len(found) > 1:
        raise InputError(f"{anat}: several {what} ({', '.join(p.name for p in found)}); choose "
                         "one with --target-image", EX_USAGE)
    return found[0]


def _check_target(target: Path, bids_dir: Path, participant: str, session: str | None) -> Path:
    if not target.is_file():
        raise InputError(f"{target}: target image not found", EX_NOINPUT)
    session_dir = _session_dir(bids_dir, participant, session)
    if not is_inside(target, session_dir):
        raise InputError(f"{target}: the target image must be an image of {session_dir} (the "
                         "contours live in the scanner space of that session)", EX_USAGE)
    return target


def _check_output(output: Path, bids_dir: Path) -> None:
    derivatives = bids_dir / "derivatives"
    if output.resolve() == bids_dir.resolve() or output.resolve() == derivatives.resolve() or (
            is_inside(output, bids_dir) and not is_inside(output, derivatives)):
        raise InputError(f"{output}: the contours dataset must not be the raw dataset or inside "
                         "it, except in a folder under derivatives/", EX_USAGE)


# --------------------------------------------------------------------------- writing
def _save_labels(path: Path, labels: np.ndarray, target_image: Path) -> None:
    """Save the label map on the target's grid, atomically and with normal permissions.

    ``like=`` keeps the target's header, qform and sform with their codes, so the pipeline
    finds the label map on exactly the grid of the image it was rasterised onto.
    """
    import nibabel as nb

    reference = nb.load(str(target_image))
    save_nifti(path, labels, like=reference, dtype=labels.dtype, atomic=True, intent="label",
               header_fields={"cal_min": 0, "cal_max": int(labels.max()),
                              "descrip": b"GTV labels from RTSTRUCT"})


def _dataset_description(output: Path, bids_dir: Path) -> dict:
    if is_inside(output, bids_dir / "derivatives"):
        raw = Path(os.path.relpath(bids_dir.resolve(), output.resolve())).as_posix() + "/"
    else:
        raw = bids_dir.resolve().as_uri()
    return {
        "Name": "GTV contours imported from DICOM RTSTRUCT",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": PROG,
            "Version": __version__,
            "CodeURL": "https://pypi.org/project/bids-agquant/",
            "Description": "DICOM RTSTRUCT ROIs rasterised in physical space onto a session "
                           "image of the raw dataset",
        }],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": raw},
    }


def _sidecar(result: ImportResult, bids_dir: Path, rtstruct: Path, image_series: Path) -> dict:
    ss, grid = result.structure_set, result.grid
    target_uri = bids_uri(result.target_image, bids_dir)
    sources = [f"urn:oid:{ss.sop_instance_uid}"] if ss.sop_instance_uid else []
    if is_inside(rtstruct, bids_dir):
        sources.append(bids_uri(rtstruct, bids_dir))
    sources.append(target_uri)
    referenced = {"Type": "DICOM series" if grid.kind == "dicom" else "NIfTI of the series",
                  "Path": str(image_series),
                  "Shape": list(grid.shape),
                  "VoxelSize_mm": [round(float(v), 6) for v in grid.spacing_mm]}
    if grid.kind == "nifti" and is_inside(image_series, bids_dir):
        referenced["URI"] = bids_uri(image_series, bids_dir)
    return {
        "Description": "Gross tumour volumes imported from a DICOM RTSTRUCT, one integer label "
                       "per ROI (0 = background), on the grid of the SpatialReference image",
        "Sources": sources,
        "SpatialReference": target_uri,
        "RTStructFile": rtstruct.name,
        "RTStructSOPInstanceUID": ss.sop_instance_uid,
        "RTStructSeriesInstanceUID": ss.series_uid,
        "StudyInstanceUID": ss.study_uid,
        "StructureSetLabel": ss.label,
        "ReferencedSeriesInstanceUID": grid.series_uid or (
            ss.referenced_series_uids[0] if ss.referenced_series_uids else None),
        "FrameOfReferenceUID": grid.frame_of_reference_uid or (
            ss.frame_of_reference_uids[0] if ss.frame_of_reference_uids else None),
        "ReferencedImage": referenced,
        "ROIs": result.roi_table(),
        "RasterisationMethod": RASTERISATION_METHOD.format(s=result.supersampling),
        "SliceTolerance": f"{result.slice_tolerance:g} of the slice spacing",
        "Notes": result.notes,
    }


def import_to_contours_dataset(rtstruct, image_series, bids_dir, participant: str,
                               session: str | None = None, *, ce: str | None = None,
                               target_image=None, patterns=DEFAULT_PATTERNS, output_dir=None,
                               overwrite: bool = False) -> dict[str, Path]:
    """Import the GTVs of an RTSTRUCT into a contours derivatives dataset.

    Parameters
    ----------
    rtstruct, image_series : str or os.PathLike
        See :func:`bids_agquant.rtstruct.import_rtstruct`.
    bids_dir : str or os.PathLike
        Raw BIDS dataset (never written to, except under ``derivatives/``).
    participant, session : str
        Labels without ``sub-`` / ``ses-``; ``session`` is required when the participant has
        sessions.
    ce : str, optional
        ``ce-`` entity of the target image and of the written files.
    target_image : str or os.PathLike, optional
        Image of that session defining the output grid; default its T1w.
    patterns : sequence of str
        ROI name patterns; default ``("*GTV*",)``.
    output_dir : str or os.PathLike, optional
        Default ``bids_dir/derivatives/contours``.
    overwrite : bool
        Replace an existing contour file.

    Returns
    -------
    dict of str to Path
        ``dseg``, ``tsv`` and ``json`` paths written (``dataset_description`` too, if new).

    Raises
    ------
    InputError
        Exit codes per DESIGN.md §7 (64, 65, 66, 73).
    """
    bids_dir = Path(bids_dir).absolute()
    rtstruct, image_series = Path(rtstruct).absolute(), Path(image_series).absolute()
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir / 'dataset_description.json'}: missing; is this the root "
                         "of a BIDS dataset?", EX_NOINPUT)
    output = Path(output_dir).absolute() if output_dir else bids_dir / "derivatives" / "contours"
    _check_output(output, bids_dir)
    if target_image is None:
        target = find_target_image(bids_dir, participant, session, ce)
    else:
        target = _check_target(Path(target_image).absolute(), bids_dir, participant, session)

    stem = _stem(participant, session, ce)
    anat = output / f"sub-{participant}" / (f"ses-{session}" if session else "") / "anat"
    paths = {"dseg": anat / f"{stem}_desc-GTV_dseg.nii.gz",
             "tsv": anat / f"{stem}_desc-GTV_dseg.tsv",
             "json": anat / f"{stem}_desc-GTV_dseg.json"}
    if paths["dseg"].exists() and not overwrite:
        raise InputError(f"{paths['dseg']}: exists; pass --overwrite to replace it",
                         EX_CANTCREAT)

    result = import_rtstruct(rtstruct, image_series, target, patterns=patterns)
    for row in result.roi_table():
        LOGGER.info("label %d = ROI %d %r: %.3f ml on the referenced series, %.3f ml (%d voxels)"
                    " on %s", row["index"], row["ROINumber"], row["ROIName"],
                    row["VolumeReferencedSeries_ml"], row["Volume_ml"], row["NumberOfVoxels"],
                    target.name)
    for note in result.notes:
        LOGGER.info("%s", note)

    others = [p for p in (output / f"sub-{participant}").rglob(f"sub-{participant}_*_dseg.nii*")
              if p != paths["dseg"]] if (output / f"sub-{participant}").is_dir() else []
    if others:
        LOGGER.warning("%s also holds %s; bids-agquant uses one contour file per participant",
                       output, ", ".join(p.name for p in others))
    try:
        anat.mkdir(parents=True, exist_ok=True)
        description = output / "dataset_description.json"
        if not description.exists():
            atomic_write_text(description,
                              json.dumps(_dataset_description(output, bids_dir), indent=2) + "\n")
            paths["dataset_description"] = description
        names = [re.sub(r"[\t\r\n]+", " ", roi.name) or f"ROI{roi.number}"
                 for roi in result.rois]
        atomic_write_text(paths["tsv"], "index\tname\n" + "".join(
            f"{index}\t{name}\n" for index, name in enumerate(names, start=1)))
        atomic_write_text(paths["json"], json.dumps(
            _sidecar(result, bids_dir, rtstruct, image_series), indent=2) + "\n")
        # The label map last: it is what the pipeline looks for.
        _save_labels(paths["dseg"], result.labels, target)
    except OSError as exc:
        raise InputError(f"{anat}: cannot write the contours ({exc})", EX_CANTCREAT) from None
    return paths


def main(argv=None) -> int:
    """Console entry point; returns (and, without ``argv``, exits with) the exit code."""
    opts = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if opts.verbose > 1 else logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                            datefmt="%H:%M:%S")
    try:
        paths = import_to_contours_dataset(
            opts.rtstruct, opts.image_series, opts.bids_dir, opts.participant_label,
            opts.session_label, ce=opts.ce, target_image=opts.target_image,
            patterns=opts.roi, output_dir=opts.output, overwrite=opts.overwrite)
    except InputError as exc:
        LOGGER.error("%s", exc)
        code = exc.exit_code
    else:
        LOGGER.info("wrote %s", paths["dseg"])
        code = 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
