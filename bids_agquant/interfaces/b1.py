"""Nipype adapter around :func:`bids_agquant.b1maps.compute_b1` (load, call, save)."""

from __future__ import annotations

import json
import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..io import save_nifti


class _ComputeB1InputSpec(BaseInterfaceInputSpec):
    source = traits.Str(mandatory=True, desc="the session's B1Source as JSON (from the plan)")
    units_override = traits.Str(desc="--b1-units for a given TB1map")


class _ComputeB1OutputSpec(TraitedSpec):
    b1_fraction = File(exists=True, desc="B1+ as a fraction of nominal, on the map's own grid")
    decision = traits.Str(desc="how the map was obtained")


class ComputeB1(SimpleInterface):
    """A session's B1+ fraction map from any BIDS representation (TB1map, TB1TFL, TB1AFI,
    TB1DAM, TB1SRGE)."""

    input_spec = _ComputeB1InputSpec
    output_spec = _ComputeB1OutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from ..b1maps import compute_b1
        from ..plan import B1Source, _decode

        source = _decode(B1Source, json.loads(self.inputs.source))
        b1 = compute_b1(source, self.inputs.units_override or None)
        self._results["b1_fraction"] = save_nifti(
            os.path.join(runtime.cwd, "B1fraction.nii.gz"), b1.fraction, like=b1.image,
            dtype=np.float32)
        self._results["decision"] = b1.decision
        return runtime
