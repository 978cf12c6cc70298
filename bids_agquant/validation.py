"""BIDS validation of the input dataset with the official validator (``bids-validator-deno``)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import EX_VALIDATION, InputError

LOGGER = logging.getLogger("bids_agquant")


def find_validator() -> str | None:
    """``bids-validator-deno`` on PATH, or beside this Python (a venv used without activation)."""
    exe = shutil.which("bids-validator-deno")
    if exe:
        return exe
    local = Path(sys.executable).with_name("bids-validator-deno")
    return str(local) if local.exists() else None


def validate_bids(bids_dir: Path) -> None:
    """Run bids-validator-deno on the input; raise InputError(16) when it reports errors."""
    exe = find_validator()
    if exe is None:
        LOGGER.warning("bids-validator-deno not found: input not validated")
        return
    proc = subprocess.run([exe, "--no-color", "--ignoreWarnings", str(bids_dir)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # The report is on stdout; a validator that could not run says why on stderr.
        report = (proc.stdout[-4000:] + "\n" + proc.stderr[-2000:]).strip()
        raise InputError(f"{bids_dir}: BIDS validation failed (exit {proc.returncode}):\n"
                         f"{report}", EX_VALIDATION)
