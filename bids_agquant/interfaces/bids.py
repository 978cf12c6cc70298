"""``DerivativesSink``: write one result into the BIDS-Derivatives output dataset.

A slim cousin of niworkflows' ``DerivativesDataSink``: the file name comes from pybids
``build_path`` with the app's own path patterns (``data/derivatives.json``); the copy is
atomic; a JSON sidecar carries ``Sources`` (BIDS URIs), ``Units`` and every parameter that
produced the data. niworkflows itself is not used because it pulls in TemplateFlow (network)
and a large dependency tree for what is here one small function.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..derivatives import build_derivative_path
from ..io import atomic_copy, atomic_write_text


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    base_directory = traits.Directory(mandatory=True, desc="root of the derivatives dataset")
    entities = traits.Dict(mandatory=True, desc="BIDS entities (pybids names) and suffix")
    metadata = traits.Dict(desc="sidecar fields")
    sidecar_file = File(exists=True, desc="a ready-made JSON sidecar (e.g. a data dictionary)")
    extra_metadata = traits.Dict(desc="sidecar fields known only at run time")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_sidecar = File()


class DerivativesSink(SimpleInterface):
    """Copy ``in_file`` to its BIDS-Derivatives name and write its sidecar."""

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        entities = dict(self.inputs.entities)
        suffix_ext = "".join(Path(self.inputs.in_file).suffixes)
        entities.setdefault("extension", suffix_ext if suffix_ext in (".nii.gz", ".nii", ".tsv",
                                                                      ".mat") else ".nii.gz")
        relpath = build_derivative_path(entities)
        out_file = Path(self.inputs.base_directory) / relpath
        sidecar = Path(re.sub(r"(\.nii\.gz|\.nii|\.tsv|\.mat)$", ".json", str(out_file)))
        if self.inputs.sidecar_file:
            meta = json.loads(Path(self.inputs.sidecar_file).read_text())
        else:
            meta = {}
        meta.update(self.inputs.metadata or {})
        meta.update(self.inputs.extra_metadata or {})
        if meta:
            atomic_write_text(sidecar, json.dumps(meta, indent=2, default=str) + "\n")
            self._results["out_sidecar"] = str(sidecar)
        # The data file last: a run killed in between leaves a sidecar without its data, never
        # data that look complete without their provenance.
        atomic_copy(self.inputs.in_file, out_file)
        self._results["out_file"] = str(out_file)
        return runtime
