"""genrec-otcoreset."""

from importlib.metadata import PackageNotFoundError, version

from genrec_otcoreset._errors import OtCoresetError
from genrec_otcoreset._exact import ExactOTResult, exact_ot
from genrec_otcoreset._features import (
    FeatureSet,
    compute_features,
    features_key,
    features_match,
    load_features,
    save_features,
)
from genrec_otcoreset._select import METHODS, SelectionResult, select
from genrec_otcoreset._selection_io import read_selection, selection_log, selection_table, write_selection
from genrec_otcoreset._sinkhorn import SinkhornBackend, SinkhornResult, sinkhorn, sinkhorn_gathered

try:
    __version__ = version("genrec-otcoreset")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "METHODS",
    "ExactOTResult",
    "FeatureSet",
    "OtCoresetError",
    "SelectionResult",
    "SinkhornBackend",
    "SinkhornResult",
    "__version__",
    "compute_features",
    "exact_ot",
    "features_key",
    "features_match",
    "load_features",
    "read_selection",
    "save_features",
    "select",
    "selection_log",
    "selection_table",
    "sinkhorn",
    "sinkhorn_gathered",
    "write_selection",
]
