"""stacsr: cloud-native super-resolution of Sentinel-2 imagery (STAC in, 2.5 m COGs and STAC items out)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stacsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

import os as _os

from stacsr.plumbing.redaction import install_log_scrubbing

install_log_scrubbing()  # no token or key in any log record, whatever the level


# GDAL's block cache defaults to 5 % of RAM in every process that reads or writes rasters; stacsr's memory
# is meant to be set by the tiles in flight, so the cache is bounded (MB) unless the operator says otherwise.
# It must be set before GDAL first uses its cache, hence here, in every process that imports stacsr.
_os.environ.setdefault("GDAL_CACHEMAX", "256")
