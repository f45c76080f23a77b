"""generate_profiles with the template backend: contract, resume, skipped users, prompt fitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from genrec_profiler import (
    Completion,
    LLMClient,
    ProfilerConfig,
    ProfileRequest,
    ProfilerError,
    TemplateBackend,
    generate_profiles,
    profile_stats,
)
from genrec_profiler._digest import compute_digests
from genrec_profiler._prompt import fit_prompt

CONTRACT = ["user_id", "traits", "age", "gender", "education", "socioeco", "preferences", "routines",
            "summary", "backend", "model", "raw", "status", "error"]


def test_import_does_not_load_torch() -> None:
    code = ("import sys, genrec_profiler; "
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_template_profiles_follow_the_contract(city: Any, tmp_path: Path) -> None:
    out = tmp_path / "profiles.parquet"
    result = generate_profiles(city.path, client=TemplateBackend(), out=out, config=ProfilerConfig(batch_size=5))
    users = sorted(city.train["user_id"].unique().to_list())
    table = pl.read_parquet(out)
    assert result.path == out
    assert result.n_users == len(users) == result.n_generated
    assert table.columns[: len(CONTRACT)] == CONTRACT
    assert sorted(table["user_id"].to_list()) == users
    assert table["status"].unique().to_list() == ["ok"]
    assert result.n_ok == len(users)
    assert result.n_failed == 0
    assert all(len(t) == 5 for t in table["traits"].to_list())
    assert set(table["backend"]) == {"template"}
    # what the table says about each history matches the check-ins
    counts = dict(city.train.group_by("user_id").len().iter_rows())
    for row in table.iter_rows(named=True):
        assert row["n_checkins"] == counts[row["user_id"]]
        assert row["n_checkins_used"] == row["n_checkins"]
        assert row["n_checkins_cut"] == 0
        assert json.loads(row["raw"])["summary"] == row["summary"]
    assert not (tmp_path / "profiles.parquet.parts").exists()


def test_default_out_is_inside_the_prepared_folder(city: Any, tmp_path: Path) -> None:
    import shutil

    from genrec_sftdata import load_prepared

    folder = tmp_path / "prepared"
    shutil.copytree(city.path, folder)
    result = generate_profiles(load_prepared(folder), client=TemplateBackend(), config=ProfilerConfig(users=2))
    assert result.path == folder / "profiles.parquet"
    assert pl.read_parquet(result.path).height == 2


def test_rerun_skips_finished_users_and_extends(city: Any, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    first = generate_profiles(city, client=TemplateBackend(), out=out, config=ProfilerConfig(users=4))
    assert first.n_generated == 4
    again = generate_profiles(city, client=TemplateBackend(), out=out, config=ProfilerConfig(users=4))
    assert again.n_generated == 0
    assert again.n_resumed == 4
    more = generate_profiles(city, client=TemplateBackend(), out=out, config=ProfilerConfig(users=7))
    assert more.n_generated == 3
    assert more.n_resumed == 4
    table = pl.read_parquet(out)
    assert table.height == 7
    assert table["user_id"].n_unique() == 7
    fresh = generate_profiles(city, client=TemplateBackend(), out=out, config=ProfilerConfig(users=2, overwrite=True))
    assert fresh.n_generated == 2
    assert pl.read_parquet(out).height == 2


def test_user_without_train_checkins_is_reported_and_skipped(checkins_with_ghost: pl.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    result = generate_profiles(checkins_with_ghost, client=TemplateBackend(), out=out)
    assert result.no_train_users == ("ghost",)
    table = pl.read_parquet(out)
    assert "ghost" not in table["user_id"].to_list()
    assert table.height == result.n_users == checkins_with_ghost.filter(pl.col("split") == "train")["user_id"].n_unique()


def test_bad_inputs_name_the_problem(city: Any, tmp_path: Path) -> None:
    with pytest.raises(ProfilerError, match="missing column 'poi_idx'"):
        generate_profiles(city.checkins.drop("poi_idx"), client=TemplateBackend(), out=tmp_path / "p.parquet")
    with pytest.raises(ProfilerError, match="out= is required"):
        generate_profiles(city.checkins, client=TemplateBackend())
    with pytest.raises(ProfilerError, match="user 'nobody' has no check-ins"):
        generate_profiles(city, client=TemplateBackend(), out=tmp_path / "p.parquet",
                          config=ProfilerConfig(user_ids=("nobody",)))
    with pytest.raises(ProfilerError, match="batch_size"):
        ProfilerConfig(batch_size=0)


class FlakyClient:
    """A client that answers prose first and a valid profile only when given feedback."""

    backend = "flaky"
    model = "flaky-1"

    def __init__(self, bad_users: set[str], fixable: bool) -> None:
        self.bad_users, self.fixable = bad_users, fixable
        self.seen: list[tuple[str, int, int]] = []

    @property
    def prompt_token_budget(self) -> int | None:
        return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        out = []
        for r in requests:
            self.seen.append((r.user_id, r.attempt, len(r.messages)))
            good = TemplateBackend().complete([r])[0].text
            bad = r.user_id in self.bad_users and (r.attempt == 0 or not self.fixable)
            out.append(Completion(text="I think this user likes coffee." if bad else good, tokens_in=10, tokens_out=5))
        return out


@pytest.mark.parametrize("fixable", [True, False])
def test_invalid_output_is_retried_with_feedback(city: Any, tmp_path: Path, fixable: bool) -> None:
    users = city.train["user_id"].unique(maintain_order=True).to_list()[:3]
    client = FlakyClient({users[1]}, fixable)
    assert isinstance(client, LLMClient)
    result = generate_profiles(city, client=client, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(user_ids=tuple(users), max_retries=2))
    table = pl.read_parquet(result.path).sort("user_id")
    bad = table.filter(pl.col("user_id") == users[1]).row(0, named=True)
    retries = [(a, n) for u, a, n in client.seen if u == users[1]]
    # the retry carries the rejected answer and the feedback: 2 more messages per attempt
    assert retries[:2] == [(0, 2), (1, 4)]
    if fixable:
        assert bad["status"] == "ok"
        assert bad["attempts"] == 2
        assert result.n_failed == 0
    else:
        assert bad["status"] == "failed"
        assert bad["attempts"] == 3
        assert len(retries) == 3
        assert bad["raw"] == "I think this user likes coffee."
        assert "no JSON object" in bad["error"]
        assert result.n_failed == 1
    assert bad["tokens_in"] == 10 * bad["attempts"]
    # one bad user never stops the others
    assert table.filter(pl.col("user_id") != users[1])["status"].to_list() == ["ok", "ok"]


class ExplodingClient(FlakyClient):
    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        if any(r.user_id in self.bad_users for r in requests):
            raise RuntimeError("backend crashed")
        return super().complete(requests)


def test_a_crashing_batch_is_recorded_as_failed(city: Any, tmp_path: Path) -> None:
    users = city.train["user_id"].unique(maintain_order=True).to_list()[:4]
    client = ExplodingClient({users[0]}, True)
    result = generate_profiles(city, client=client, out=tmp_path / "p.parquet",
                               config=ProfilerConfig(user_ids=tuple(users), batch_size=2))
    table = pl.read_parquet(result.path)
    failed = table.filter(pl.col("status") == "failed")
    assert result.n_failed == 2 == failed.height  # the whole first batch
    assert all("RuntimeError: backend crashed" in e for e in failed["error"])


def test_fit_prompt_keeps_the_most_recent_checkins() -> None:
    sentences = [f"At t{i}, user u visited POI id {i} which is a/an Bar with category id 1." for i in range(200)]
    count = lambda texts: [len(t.split()) for t in texts]  # noqa: E731
    full = fit_prompt("u", sentences, "digest line", budget=None, count_tokens=count)
    assert full.n_used == 200
    assert full.n_cut == 0
    fit = fit_prompt("u", sentences, "digest line", budget=900, count_tokens=count)
    assert 0 < fit.n_used < 200
    assert fit.n_used + fit.n_cut == 200
    text = fit.messages[-1]["content"]
    assert sentences[-1] in text
    assert sentences[-fit.n_used] in text
    assert sentences[-fit.n_used - 1] not in text
    assert f"the {fit.n_cut} older ones did not fit" in text
    assert "digest line" in text
    assert sum(count([m["content"] for m in fit.messages])) <= 900
    capped = fit_prompt("u", sentences, "d", budget=None, count_tokens=count, max_checkins=10)
    assert capped.n_used == 10
    assert capped.n_cut == 190


def test_run_records_what_was_cut(city: Any, tmp_path: Path) -> None:
    result = generate_profiles(city, client=TemplateBackend(), out=tmp_path / "p.parquet",
                               config=ProfilerConfig(max_prompt_tokens=600, users=3))
    table = pl.read_parquet(result.path)
    assert (table["n_checkins_cut"] > 0).all()
    assert (table["n_checkins_used"] + table["n_checkins_cut"] == table["n_checkins"]).all()
    assert profile_stats(result.path).checkins_cut_users == 3


def _reference_top_category(train: pl.DataFrame) -> dict[str, str]:
    """Most visited category per user with pandas (ties: alphabetical), independent of our Polars code."""
    df = train.select("user_id", "category_name").to_pandas()
    counts = df.groupby(["user_id", "category_name"]).size().reset_index(name="n")
    counts = counts.sort_values(["user_id", "n", "category_name"], ascending=[True, False, True])
    return dict(counts.groupby("user_id").head(1)[["user_id", "category_name"]].itertuples(index=False))


def test_template_on_the_real_nyc_slice(nyc: Any, tmp_path: Path) -> None:
    result = generate_profiles(nyc, client=TemplateBackend(), out=tmp_path / "nyc.parquet")
    table = pl.read_parquet(result.path)
    users = nyc.train["user_id"].unique().to_list()
    assert table.height == len(users) == table["user_id"].n_unique()
    assert result.n_failed == 0
    top = _reference_top_category(nyc.train)
    for row in table.iter_rows(named=True):
        assert row["preferences"][0].startswith(top[row["user_id"]] + " (")
    # the digest's revisit rate and home against a pandas reference for a few users
    digests = compute_digests(nyc.train)
    ref = nyc.train.to_pandas()
    for user in users[:10]:
        part = ref[ref.user_id == user]
        assert digests[user].revisit_rate == pytest.approx(1 - part.poi_id.nunique() / len(part))
        assert digests[user].n_checkins == len(part)
    stats = profile_stats(result.path)
    assert stats.n_users == len(users)
    assert stats.status["ok"] == len(users)
    assert sum(stats.attributes["age"].values()) == pytest.approx(1.0)
    assert set(stats.traits) == {"extraversion", "agreeableness", "conscientiousness", "neuroticism", "openness"}


def test_digests_come_in_first_appearance_order_whatever_the_hash_seed(tmp_path: Path) -> None:
    """The digests (and so the users the bench and the CLI take first) do not depend on PYTHONHASHSEED
    or on how polars happens to group: they follow the check-ins' first appearance of each user."""
    code = (
        "from genrec_sftdata import prepare, synthesize_city\n"
        "from genrec_profiler._digest import compute_digests\n"
        "train = prepare(synthesize_city(n_users=60, seed=3)).train\n"
        "print(','.join(compute_digests(train)))\n"
        "print(','.join(dict.fromkeys(train['user_id'].cast(str).to_list())))\n"
    )
    outs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        order, appearance = out.stdout.strip().splitlines()
        assert order == appearance
        outs.append(order)
    assert len(set(outs)) == 1


def test_padding_backends_get_batches_of_similar_prompt_length(city: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that pads its batches gets each window of users regrouped by prompt length (the
    shortest prompts together); every user still gets exactly one row. Others keep the users' order."""
    import genrec_profiler._generate as gen

    class Recording(TemplateBackend):
        def __init__(self, pads: bool) -> None:
            self.pads_batches, self.batches = pads, []

        def complete(self, requests: Sequence[Any]) -> list[Any]:
            self.batches.append([(r.user_id, sum(self.count_tokens([m["content"] for m in r.messages])))
                                 for r in requests])
            return super().complete(requests)

    monkeypatch.setattr(gen, "_SORT_WINDOW", 2)  # windows of 2 batches of 3 users
    users = city.train["user_id"].unique(maintain_order=True).cast(pl.String).to_list()[:10]
    config = ProfilerConfig(user_ids=tuple(users), batch_size=3, max_checkins=None)
    padded, plain = Recording(True), Recording(False)
    for client, name in ((padded, "a"), (plain, "b")):
        result = generate_profiles(city, client=client, out=tmp_path / f"{name}.parquet", config=config)
        table = pl.read_parquet(result.path)
        assert sorted(table["user_id"].to_list()) == sorted(users) and table.height == 10
    assert [u for b in plain.batches for u, _ in b] == users
    assert [len(b) for b in padded.batches] == [3, 3, 3, 1]
    for window, expected in ((padded.batches[0] + padded.batches[1], users[:6]),
                             (padded.batches[2] + padded.batches[3], users[6:])):
        assert sorted(u for u, _ in window) == sorted(expected)  # the same users, by prompt length
        assert [n for _, n in window] == sorted(n for _, n in window)
    assert len({n for _, n in padded.batches[0] + padded.batches[1]}) > 1  # the prompts do differ
