"""genrec-trainer: supervised fine-tuning of causal LMs on SFT records (LoRA / QLoRA, FSDP under torchrun).

Importing this package is cheap: torch, transformers, peft and bitsandbytes load inside ``train``.
"""

from importlib.metadata import PackageNotFoundError, version

from genrec_trainer._config import TrainConfig, load_config, recipe_path, recipes
from genrec_trainer._errors import TrainerError
from genrec_trainer._model import resolve_model
from genrec_trainer._train import TrainResult, train

try:
    __version__ = version("genrec-trainer")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainerError",
    "__version__",
    "load_config",
    "recipe_path",
    "recipes",
    "resolve_model",
    "train",
]
