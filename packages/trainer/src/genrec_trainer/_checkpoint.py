"""Checkpoint files that resuming can read without running code from them.

A checkpoint folder lives in the run's output, which other processes (or users) may be able to
write. Unpickling runs whatever the pickle asks for, so nothing here is loaded with the full
unpickler: tensor files are written with only tensors and plain containers in them and read with
``torch.load(weights_only=True)``, whose restricted unpickler refuses any other object; Python and
numpy RNG states are JSON. A file that the restricted loader refuses stops the run with one line
naming it (resuming from a tampered checkpoint, or starting over and overwriting it, would both hide
the problem).
"""

from __future__ import annotations

import json
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

from genrec_trainer._errors import TrainerError

_SCALARS = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str) -> None:
    """Fail unless ``obj`` is tensors, numbers, strings and None in dicts, lists and tuples.

    Run before saving: what the restricted loader would refuse on resume must never be written.
    """
    import torch

    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        value, path = stack.pop()
        if type(value) is torch.Tensor or type(value) is torch.nn.Parameter:
            continue
        if type(value) in _SCALARS:
            continue
        if type(value) is dict:
            for key, item in value.items():
                if type(key) not in (str, int):
                    raise TrainerError(f"internal: {path} has a key of type {type(key).__name__}")
                stack.append((item, f"{path}[{key!r}]"))
            continue
        if type(value) in (list, tuple):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
            continue
        raise TrainerError(f"internal: {path} holds a {type(value).__name__}, which a checkpoint must not")


def save_tensors(obj: Any, path: Path) -> None:
    import torch

    check_plain(obj, path.name)
    torch.save(obj, path)


def load_tensors(path: Path) -> Any:
    """``torch.load`` with the restricted unpickler; a refused or broken file is one error line."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files before refusing them; the
            # refusal below says all there is to say.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainerError(
            f"checkpoint file {path} is not loaded: the safe loader refuses it (it is not tensors and plain "
            f"containers as genrec-trainer writes them); remove {path.parent} or set resume = false"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ... for broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainerError(
            f"checkpoint file {path} cannot be read ({first}); remove {path.parent} or set resume = false"
        ) from None


def expect(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise TrainerError(
            f"checkpoint file {path} is not {what}; remove {path.parent} or set resume = false"
        )


def save_rng(folder: Path, rank: int) -> None:
    """Torch CPU/CUDA generator states as tensors, Python and numpy states as JSON."""
    import torch

    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = list(torch.cuda.get_rng_state_all())
    save_tensors(tensors, folder / f"rng-rank{rank}.pt")
    version, internal, gauss_next = random.getstate()
    plain: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}
    }
    numpy_state = _numpy_state()
    if numpy_state is not None:
        plain["numpy"] = numpy_state
    (folder / f"rng-rank{rank}.json").write_text(json.dumps(plain), encoding="utf-8")


def load_rng(folder: Path, rank: int) -> bool:
    """Restore what :func:`save_rng` wrote; False when the checkpoint has no RNG state for ``rank``."""
    import torch

    pt, js = folder / f"rng-rank{rank}.pt", folder / f"rng-rank{rank}.json"
    if not pt.exists():
        return False
    tensors = load_tensors(pt)
    expect(
        isinstance(tensors, dict) and isinstance(tensors.get("torch"), torch.Tensor),
        pt,
        "a dict of RNG state tensors",
    )
    plain: dict[str, Any] = {}
    if js.exists():
        try:
            plain = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrainerError(
                f"checkpoint file {js} cannot be read ({exc}); remove {folder} or set resume = false"
            ) from None
        expect(isinstance(plain, dict), js, "a JSON object of RNG states")
    elif "python" in tensors:
        # Checkpoints from before the JSON file kept the Python state as a tuple of ints in the .pt.
        version, internal, gauss_next = tensors["python"]
        plain = {"python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}
    try:
        torch.set_rng_state(tensors["torch"])
        if "cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tensors["cuda"])
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TrainerError(
            f"checkpoint file {pt}: bad torch RNG state ({exc}); remove {folder} or set resume = false"
        ) from None
    if "python" in plain:
        py = plain["python"]
        try:
            random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainerError(
                f"checkpoint file {js}: bad Python RNG state ({exc}); remove {folder} or set resume = false"
            ) from None
    if "numpy" in plain:
        _set_numpy_state(plain["numpy"], js)
    return True


def _numpy_state() -> dict[str, Any] | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with the stack, but is not required
        return None
    state = np.random.get_state(legacy=True)  # noqa: NPY002 - the global state is what other code draws from
    assert isinstance(state, tuple)  # legacy=True always gives the 5-tuple
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: Any, path: Path) -> None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return
    try:
        keys = np.asarray(state["keys"], dtype=np.uint32)
        np.random.set_state(  # noqa: NPY002
            (
                str(state["kind"]),
                keys,
                int(state["pos"]),
                int(state["has_gauss"]),
                float(state["cached_gaussian"]),
            )
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainerError(
            f"checkpoint file {path}: bad numpy RNG state ({exc}); remove {path.parent} or set resume = false"
        ) from None
