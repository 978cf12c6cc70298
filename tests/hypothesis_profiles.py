"""Hypothesis settings shared by the property tests (tests/unit/test_properties_*.py).

``bids-agquant-ci`` (default) is derandomised so CI runs are reproducible;
``BIDS_AGQUANT_HYPOTHESIS_PROFILE=bids-agquant-thorough`` runs random examples, ten times more.
"""

from __future__ import annotations

import contextlib
import os
import warnings

from hypothesis import settings

settings.register_profile(
    "bids-agquant-ci",
    derandomize=True,  # reproducible CI runs
    database=None,  # never write .hypothesis/ into the source tree (tests run concurrently)
    deadline=None,  # the first call of a protocol builds its lookup table (~0.1 s)
    print_blob=True,
)
settings.register_profile(
    "bids-agquant-thorough", parent=settings.get_profile("bids-agquant-ci"), derandomize=False
)
PROFILE = settings.get_profile(
    os.environ.get("BIDS_AGQUANT_HYPOTHESIS_PROFILE", "bids-agquant-ci")
)
_SCALE = 10 if not PROFILE.derandomize else 1


def props(max_examples: int, **kwargs) -> settings:
    """Settings of one property: the profile with its own example budget."""
    return settings(PROFILE, max_examples=max_examples * _SCALE, **kwargs)


@contextlib.contextmanager
def no_float_warnings():
    """Turn RuntimeWarnings (overflow, invalid value, divide by zero...) into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield
