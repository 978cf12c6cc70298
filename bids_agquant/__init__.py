"""bids-agquant: gadolinium nanoparticle uptake in brain metastases, as a BIDS App."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bids-agquant")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
