"""genrec-otcoreset."""

from importlib.metadata import PackageNotFoundError, version

from genrec_otcoreset._errors import OtCoresetError
from genrec_otcoreset._exact import ExactOTResult, exact_ot
from genrec_otcoreset._sinkhorn import SinkhornBackend, SinkhornResult, sinkhorn, sinkhorn_gathered

try:
    __version__ = version("genrec-otcoreset")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "ExactOTResult",
    "OtCoresetError",
    "SinkhornBackend",
    "SinkhornResult",
    "__version__",
    "exact_ot",
    "sinkhorn",
    "sinkhorn_gathered",
]
