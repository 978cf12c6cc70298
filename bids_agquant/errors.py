"""Exit codes (DESIGN.md §7) and the errors that carry them.

Every refusal of input names the file and what is wrong; the CLI turns the error into its exit
code. 64 is a usage error (argparse's own 2 is reserved by the BIDS-Apps specification).
"""

from __future__ import annotations

EX_OK = 0
#: A processing step or a report failed (or an unspecified error).
EX_SOFTWARE = 1
#: The input dataset failed BIDS validation (the validator's own code).
EX_VALIDATION = 16
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class InputError(Exception):
    """Unusable input; ``exit_code`` follows DESIGN.md §7 (65 bad data, 66 missing)."""

    def __init__(self, message: str, exit_code: int = EX_NOINPUT):
        super().__init__(message)
        self.exit_code = exit_code
