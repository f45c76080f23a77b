"""A learnable synthetic-city SFT set, for tests, benchmarks and demos (tiny random models come from
:func:`genrec_core.models.build_tiny_model`)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

N_POIS = 24


def next_poi(history: list[int]) -> int:
    """The synthetic city's rule: places form a ring and users walk it (learnable by a tiny model)."""
    return (history[-1] + 1) % N_POIS


def synthetic_city_records(n: int, *, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """SFT records (docs/design.md §2 columns) whose completion follows a learnable rule."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        user = rng.randrange(16)
        history = [rng.randrange(N_POIS) for _ in range(rng.randint(2, 5))]
        target = next_poi(history)
        visits = " then ".join(f"poi p{p}" for p in history)
        prompt = f"user u{user} visited {visits} . predict the next poi ?"
        completion = f"p{target}"
        records.append(
            {
                "record_id": f"{split}-{i}",
                "task": "next_poi",
                "user_id": f"u{user}",
                "split": split,
                "prompt": prompt,
                "completion": completion,
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion},
                ],
                "target_poi_idx": target,
            }
        )
    return records


def write_records(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as .parquet or .jsonl (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        import polars as pl

        pl.DataFrame(records).write_parquet(path)
    return path
