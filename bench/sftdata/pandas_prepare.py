"""A straightforward pandas implementation of LLM4POI's preprocessing rules: the baseline of
bench_prepare.py and the independent reference of tests/sftdata/test_pandas_parity.py.

Written the way LLM4POI-style scripts do it (pandas, group-wise ``apply`` for trajectories), with the
same rules, defaults and tie-breaking as ``genrec_sftdata.prepare`` so the two give the same tables.
"""

from __future__ import annotations

import pandas as pd

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def _trajectories(user: pd.DataFrame, max_gap: pd.Timedelta) -> pd.Series:
    gap = user["utc_time"].diff()
    new = (gap > max_gap) | (user["split"] != user["split"].shift()) | gap.isna()
    return new.cumsum()


def pandas_prepare(
    df: pd.DataFrame,
    *,
    min_poi_checkins: int = 10,
    min_user_checkins: int = 10,
    train_frac: float = 0.8,
    val_frac: float = 0.1,
    max_gap_hours: float = 24.0,
    min_trajectory_checkins: int = 2,
    drop_unseen: bool = True,
    drop_duplicates: bool = True,
) -> pd.DataFrame:
    """Contract check-ins in (pandas), prepared check-ins out, as ``genrec_sftdata.prepare`` does."""
    df = df.copy()
    if drop_duplicates:
        df = df.drop_duplicates(subset=["user_id", "poi_id", "utc_time"], keep="first")
    if min_poi_checkins > 1:
        df = df[df.groupby("poi_id")["poi_id"].transform("size") >= min_poi_checkins]
    if min_user_checkins > 1:
        df = df[df.groupby("user_id")["user_id"].transform("size") >= min_user_checkins]

    df = df.sort_values(["utc_time", "user_id", "poi_id"], kind="mergesort").reset_index(drop=True)
    n = len(df)
    n_train, n_trainval = int(n * train_frac), int(n * (train_frac + val_frac))
    split = pd.Series("test", index=df.index)
    split.iloc[:n_train] = "train"
    split.iloc[n_train:n_trainval] = "val"
    df["split"] = split
    df["_order"] = df["split"].map(SPLIT_ORDER)

    df = df.sort_values(["user_id", "_order", "utc_time", "poi_id"], kind="mergesort").reset_index(drop=True)
    max_gap = pd.Timedelta(hours=max_gap_hours)
    k = df.groupby("user_id", group_keys=False)[["utc_time", "split"]].apply(_trajectories, max_gap)
    df["trajectory_id"] = df["user_id"] + "_" + k.astype(int).astype(str)

    if min_trajectory_checkins > 1:
        size = df.groupby("trajectory_id")["trajectory_id"].transform("size")
        df = df[~((df["split"] == "train") & (size < min_trajectory_checkins))]
    if drop_unseen:
        train = df[df["split"] == "train"]
        seen = df["user_id"].isin(set(train["user_id"])) & df["poi_id"].isin(set(train["poi_id"]))
        df = df[(df["split"] == "train") | seen]
    if min_trajectory_checkins > 1:
        size = df.groupby("trajectory_id")["trajectory_id"].transform("size")
        df = df[size >= min_trajectory_checkins]

    train = df[df["split"] == "train"]
    for col, code in (("user_id", "user_idx"), ("poi_id", "poi_idx"), ("category_id", "category_idx")):
        values = sorted(train[col].unique())
        mapping = {v: i for i, v in enumerate(values)}
        if col == "category_id":
            for extra in sorted(set(df[col]) - set(values)):
                mapping[extra] = len(mapping)
        df[code] = df[col].map(mapping).astype("Int64")
    df = df.sort_values(["user_id", "utc_time", "_order", "poi_id"], kind="mergesort").drop(columns="_order")
    return df.reset_index(drop=True)
