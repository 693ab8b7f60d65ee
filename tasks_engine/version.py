"""The installed distribution's version (``tasks_engine.__version__``, ``tasks-engine --version``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tasks-engine")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
