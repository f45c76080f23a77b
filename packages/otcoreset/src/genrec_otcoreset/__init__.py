"""genrec-otcoreset."""

from importlib.metadata import PackageNotFoundError, version

from genrec_otcoreset._errors import OtCoresetError

try:
    __version__ = version("genrec-otcoreset")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = ["OtCoresetError", "__version__"]
