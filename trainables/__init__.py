"""records-sweep trainables: the LT-PLL method (data, models, CORR family, RECORDS, SoLar) and its training loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("records-sweep")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
