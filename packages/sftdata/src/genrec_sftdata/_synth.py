"""A synthetic city: deterministic, seeded check-ins that look like Foursquare and can be learned.

The generator simulates users day by day. Each active day is one outing (a trajectory) that starts near
home; each step picks a category from a category-to-category transition matrix shaped by the hour and the
weekday and by the user's taste, then a POI: usually the user's own favourite of that category (revisits),
otherwise a popular one nearby. The loop runs over steps within a day (at most ``max_daily_checkins``),
vectorised over every outing of a chunk of users, so 50,000 users take seconds, not hours.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from genrec_sftdata._checks import check_bool, check_int, check_number, check_str
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

#: Upper bounds of :class:`CityConfig` (README, "The synthetic city").
MAX_USERS = 10_000_000
MAX_POIS = 100_000_000
MAX_NEIGHBOURHOODS = 1_000_000
MAX_CHECKINS_PER_USER = 100_000
MAX_DAILY_CHECKINS = 1_000
MAX_DAYS = 36_600
MAX_CHECKINS = 2_000_000_000

# (parent, name) pairs: a small Foursquare-like taxonomy.
_TAXONOMY: tuple[tuple[str, str], ...] = (
    ("Residence", "Home (private)"),
    ("Residence", "Residential Building (Apartment / Condo)"),
    ("Professional", "Office"),
    ("Professional", "Coworking Space"),
    ("College", "University"),
    ("College", "College Academic Building"),
    ("Food", "Coffee Shop"),
    ("Food", "Bakery"),
    ("Food", "Diner"),
    ("Food", "Pizza Place"),
    ("Food", "Sushi Restaurant"),
    ("Food", "Mexican Restaurant"),
    ("Food", "Deli / Bodega"),
    ("Food", "Fast Food Restaurant"),
    ("Food", "Italian Restaurant"),
    ("Nightlife", "Bar"),
    ("Nightlife", "Pub"),
    ("Nightlife", "Cocktail Bar"),
    ("Nightlife", "Nightclub"),
    ("Shops", "Grocery Store"),
    ("Shops", "Clothing Store"),
    ("Shops", "Drugstore / Pharmacy"),
    ("Shops", "Electronics Store"),
    ("Shops", "Bookstore"),
    ("Outdoors", "Park"),
    ("Outdoors", "Gym / Fitness Center"),
    ("Outdoors", "Playground"),
    ("Outdoors", "Beach"),
    ("Arts", "Movie Theater"),
    ("Arts", "Museum"),
    ("Arts", "Theater"),
    ("Arts", "Music Venue"),
    ("Arts", "Stadium"),
    ("Transport", "Subway"),
    ("Transport", "Train Station"),
    ("Transport", "Bus Station"),
    ("Transport", "Airport"),
    ("Transport", "Hotel"),
)
_PARENTS = ("Residence", "Professional", "College", "Food", "Nightlife", "Shops", "Outdoors", "Arts", "Transport")
# Parent-to-parent transitions (rows: from, columns: to), in _PARENTS order: commuters go home ->
# transport -> work -> food -> work -> transport/nightlife -> home.
_PARENT_TRANSITIONS = np.array(
    [
        # Res  Prof  Coll  Food  Night Shops Outd  Arts  Trans
        [0.3, 1.2, 0.6, 1.6, 0.3, 0.8, 0.9, 0.3, 2.2],  # Residence
        [0.6, 0.4, 0.1, 2.0, 0.8, 0.5, 0.4, 0.2, 1.6],  # Professional
        [0.5, 0.1, 0.6, 1.8, 0.6, 0.4, 0.5, 0.3, 1.2],  # College
        [1.0, 1.4, 0.8, 0.4, 0.9, 0.9, 0.6, 0.6, 1.2],  # Food
        [1.8, 0.1, 0.1, 0.8, 0.9, 0.2, 0.2, 0.4, 1.0],  # Nightlife
        [1.2, 0.4, 0.2, 1.2, 0.4, 0.8, 0.5, 0.4, 1.0],  # Shops
        [1.0, 0.3, 0.2, 1.4, 0.4, 0.6, 0.4, 0.4, 0.9],  # Outdoors
        [0.9, 0.1, 0.1, 1.4, 1.2, 0.5, 0.4, 0.3, 1.0],  # Arts
        [1.2, 1.8, 0.9, 0.9, 0.8, 0.7, 0.6, 0.8, 0.3],  # Transport
    ]
)
# Parent affinity by hour bucket (0-4, 5-8, 9-11, 12-14, 15-18, 19-23) on weekdays and weekends.
_HOUR_EDGES = np.array([5, 9, 12, 15, 19])
_WEEKDAY_AFFINITY = np.array(
    [
        # 0-4  5-8  9-11 12-14 15-18 19-23
        [2.0, 1.0, 0.3, 0.3, 0.6, 1.6],  # Residence
        [0.1, 1.0, 2.5, 1.0, 1.6, 0.3],  # Professional
        [0.1, 0.8, 2.0, 1.2, 1.2, 0.3],  # College
        [0.4, 1.3, 0.8, 2.5, 0.9, 1.6],  # Food
        [1.5, 0.05, 0.05, 0.2, 0.6, 2.5],  # Nightlife
        [0.1, 0.3, 0.8, 1.0, 1.5, 0.8],  # Shops
        [0.1, 1.0, 0.6, 0.8, 1.2, 0.5],  # Outdoors
        [0.2, 0.1, 0.4, 0.6, 0.9, 1.8],  # Arts
        [0.5, 2.2, 1.0, 0.6, 1.8, 1.0],  # Transport
    ]
)
_WEEKEND_AFFINITY = np.array(
    [
        [2.0, 1.2, 0.6, 0.4, 0.6, 1.4],  # Residence
        [0.05, 0.1, 0.2, 0.2, 0.2, 0.05],  # Professional
        [0.05, 0.1, 0.2, 0.2, 0.2, 0.05],  # College
        [0.5, 0.6, 1.8, 2.5, 1.2, 1.8],  # Food
        [2.0, 0.05, 0.1, 0.4, 0.9, 3.0],  # Nightlife
        [0.1, 0.2, 1.4, 1.6, 1.8, 0.8],  # Shops
        [0.1, 0.8, 1.8, 1.6, 1.6, 0.4],  # Outdoors
        [0.2, 0.1, 1.0, 1.4, 1.6, 2.0],  # Arts
        [0.6, 0.6, 1.0, 0.8, 1.0, 1.0],  # Transport
    ]
)


@dataclass(frozen=True, kw_only=True)
class CityConfig:
    """Options of :func:`synthesize_city`; every field has a realistic default."""

    n_users: int = field(metadata={"help": "number of users"})
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same city"})
    n_pois: int | None = field(
        default=None, metadata={"help": "number of POIs (default: max(200, 8 * n_users))"}
    )
    n_neighbourhoods: int | None = field(
        default=None, metadata={"help": "number of neighbourhoods (default: max(4, n_pois // 250))"}
    )
    checkins_per_user: float = field(
        default=120.0, metadata={"help": "mean check-ins per user (log-normal across users)"}
    )
    mean_daily_checkins: float = field(default=3.0, metadata={"help": "mean check-ins per active day"})
    max_daily_checkins: int = field(default=12, metadata={"help": "cap on check-ins per day"})
    start: str = field(default="2012-04-03", metadata={"help": "first local date of the simulation"})
    n_days: int = field(default=320, metadata={"help": "number of simulated days"})
    tz_offset_minutes: int = field(default=-300, metadata={"help": "local time minus UTC, minutes"})
    center_lat: float = field(default=40.73, metadata={"help": "city centre latitude"})
    center_lon: float = field(default=-73.97, metadata={"help": "city centre longitude"})
    revisit: float = field(
        default=0.75, metadata={"help": "mean probability to go to one's favourite POI of a category"}
    )
    local: float = field(
        default=0.75, metadata={"help": "probability that an exploring step stays in the neighbourhood"}
    )
    zipf_exponent: float = field(default=1.0, metadata={"help": "POI popularity power-law exponent"})
    chunk_users: int = field(default=4096, metadata={"help": "users simulated per vectorised chunk"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar over user chunks"})

    def __post_init__(self) -> None:
        c = "synthesize_city"
        # Upper bounds keep a typo (``--users 10**20``) from starting a job that never finishes or
        # exhausts memory: 10 million users is about three hours of simulation (50,000 take a minute).
        check_int(c, "n_users", self.n_users, lo=1, hi=MAX_USERS)
        check_int(c, "seed", self.seed, lo=0)
        check_int(c, "n_pois", self.n_pois, lo=len(_TAXONOMY), hi=MAX_POIS, optional=True)
        check_int(c, "n_neighbourhoods", self.n_neighbourhoods, lo=1, hi=MAX_NEIGHBOURHOODS, optional=True)
        check_number(c, "checkins_per_user", self.checkins_per_user, lo=0, lo_open=True, hi=MAX_CHECKINS_PER_USER)
        check_int(c, "max_daily_checkins", self.max_daily_checkins, lo=1, hi=MAX_DAILY_CHECKINS)
        check_number(c, "mean_daily_checkins", self.mean_daily_checkins, lo=0, lo_open=True, hi=MAX_DAILY_CHECKINS)
        check_str(c, "start", self.start)
        check_int(c, "n_days", self.n_days, lo=1, hi=MAX_DAYS)
        check_int(c, "tz_offset_minutes", self.tz_offset_minutes, lo=-12 * 60, hi=14 * 60)
        check_number(c, "center_lat", self.center_lat, lo=-90, hi=90)
        check_number(c, "center_lon", self.center_lon, lo=-180, hi=180)
        for name in ("revisit", "local"):
            check_number(c, name, getattr(self, name), lo=0, hi=1)
        check_number(c, "zipf_exponent", self.zipf_exponent, lo=0, hi=10)
        check_int(c, "chunk_users", self.chunk_users, lo=1, hi=1_000_000)
        check_bool(c, "progress", self.progress)
        expected = self.n_users * self.checkins_per_user
        if expected > MAX_CHECKINS:
            raise SftDataError(
                f"{c}: fields n_users x checkins_per_user ask for about {expected:,.0f} check-ins, more than the "
                f"{MAX_CHECKINS:,} a city may hold ({self.n_users!r} x {self.checkins_per_user!r})"
            )
        try:
            datetime.fromisoformat(self.start)
        except ValueError as exc:
            raise SftDataError(
                f"{c}: field start must be an ISO date like '2012-04-03', got {self.start!r}"
            ) from exc


def _category_ids() -> list[str]:
    # Foursquare-looking 24-hex category ids, fixed so that every city shares one taxonomy.
    return [f"4bf58dd8d48988d1{i:02x}{(i * 7919) % 65536:04x}35" for i in range(len(_TAXONOMY))]


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of an unnormalised probability matrix."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), probs.shape[1] - 1)


class _GroupSampler:
    """Popularity-weighted draws of a POI within a (category, neighbourhood) group, by inverse CDF."""

    def __init__(self, cat: np.ndarray, nbhd: np.ndarray, weight: np.ndarray, n_cat: int, n_nbhd: int):
        order = np.lexsort((nbhd, cat))
        self.order = order
        self.cum = np.cumsum(weight[order])
        self.n_nbhd = n_nbhd
        key = cat[order] * n_nbhd + nbhd[order]
        groups = np.arange(n_cat * n_nbhd)
        self.g_start = np.searchsorted(key, groups, side="left")
        self.g_end = np.searchsorted(key, groups, side="right")
        cats = np.arange(n_cat)
        self.c_start = np.searchsorted(cat[order], cats, side="left")
        self.c_end = np.searchsorted(cat[order], cats, side="right")

    def _draw(self, rng: np.random.Generator, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        lo = np.where(start > 0, self.cum[np.maximum(start - 1, 0)], 0.0)
        hi = self.cum[end - 1]
        x = lo + rng.random(len(start)) * (hi - lo)
        idx = np.searchsorted(self.cum, x, side="right")
        idx = np.clip(idx, start, end - 1)
        return self.order[idx]

    def draw(self, rng: np.random.Generator, cat: np.ndarray, nbhd: np.ndarray | None) -> np.ndarray:
        """A POI of category ``cat`` in ``nbhd`` (anywhere when None or when the group is empty)."""
        start, end = self.c_start[cat], self.c_end[cat]
        if nbhd is not None:
            g = cat * self.n_nbhd + nbhd
            gs, ge = self.g_start[g], self.g_end[g]
            has = ge > gs
            start = np.where(has, gs, start)
            end = np.where(has, ge, end)
        return self._draw(rng, start, end)


def synthesize_city(*, n_users: int, seed: int = 0, **opts: Any) -> pl.DataFrame:
    """Generate raw check-ins of a synthetic city (the contract columns before ``prepare``).

    Columns: ``user_id, poi_id, category_id, category_name, latitude, longitude, local_time,
    utc_time, timezone`` (minutes from UTC), sorted by user then time. Options are the fields of
    :class:`CityConfig`; the same arguments always give the same frame.
    """
    names = {f.name for f in fields(CityConfig)}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise SftDataError(
            f"synthesize_city: unknown option {unknown[0]!r}; known options: {sorted(names - {'n_users', 'seed'})}"
        )
    cfg = CityConfig(n_users=n_users, seed=seed, **opts)
    rng = np.random.default_rng(cfg.seed)
    n_cat = len(_TAXONOMY)
    n_pois = cfg.n_pois if cfg.n_pois is not None else max(200, 8 * cfg.n_users)
    n_nbhd = cfg.n_neighbourhoods if cfg.n_neighbourhoods is not None else max(4, n_pois // 250)
    parent_of = np.array([_PARENTS.index(p) for p, _ in _TAXONOMY])

    # Neighbourhoods: centres spread around the city centre, sizes uneven.
    nb_lat = cfg.center_lat + rng.normal(0.0, 0.06, n_nbhd)
    nb_lon = cfg.center_lon + rng.normal(0.0, 0.08, n_nbhd)
    nb_size = rng.gamma(2.0, 1.0, n_nbhd)

    # POIs: every category has at least one; homes are the most numerous.
    cat_share = rng.gamma(1.5, 1.0, n_cat)
    cat_share[parent_of == 0] *= 4.0
    poi_cat = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n_pois - n_cat, p=cat_share / cat_share.sum())]
    )
    poi_nbhd = rng.choice(n_nbhd, size=n_pois, p=nb_size / nb_size.sum())
    poi_lat = nb_lat[poi_nbhd] + rng.normal(0.0, 0.008, n_pois)
    poi_lon = nb_lon[poi_nbhd] + rng.normal(0.0, 0.010, n_pois)
    poi_pop = (1.0 + rng.permutation(n_pois)) ** (-cfg.zipf_exponent)
    sampler = _GroupSampler(poi_cat, poi_nbhd, poi_pop, n_cat, n_nbhd)

    # Category transitions: parent structure times a fixed subcategory taste, with noise.
    sub_w = rng.gamma(2.0, 1.0, n_cat)
    trans = _PARENT_TRANSITIONS[np.ix_(parent_of, parent_of)] * sub_w[None, :]
    trans *= rng.gamma(4.0, 0.25, (n_cat, n_cat))
    np.fill_diagonal(trans, trans.diagonal() * 0.2)
    affinity = np.stack([_WEEKDAY_AFFINITY[parent_of].T, _WEEKEND_AFFINITY[parent_of].T])  # (2, 6, C)

    start = datetime.fromisoformat(cfg.start)
    start_weekday = start.weekday()
    cat_ids = _category_ids()
    frames: list[pl.DataFrame] = []
    starts = range(0, cfg.n_users, cfg.chunk_users)
    if cfg.progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="synthesize_city", unit="chunk")
    for lo in starts:
        hi = min(cfg.n_users, lo + cfg.chunk_users)
        frames.append(
            _simulate_chunk(
                np.random.default_rng([cfg.seed, lo]),
                cfg,
                users=np.arange(lo, hi),
                n_cat=n_cat,
                n_nbhd=n_nbhd,
                parent_of=parent_of,
                poi_nbhd=poi_nbhd,
                sampler=sampler,
                trans=trans,
                affinity=affinity,
                start_weekday=start_weekday,
            )
        )
    raw = pl.concat(frames)
    pois = pl.DataFrame(
        {
            "poi": np.arange(n_pois),
            "poi_id": pl.Series(np.arange(n_pois)).cast(pl.String).str.zfill(6),
            "cat": poi_cat,
            "latitude": poi_lat,
            "longitude": poi_lon,
        }
    ).with_columns(pl.concat_str(pl.lit("4c"), pl.col("poi_id"), pl.lit("f964a520")).alias("poi_id"))
    cats = pl.DataFrame(
        {"cat": np.arange(n_cat), "category_id": cat_ids, "category_name": [n for _, n in _TAXONOMY]}
    )
    offset = pl.duration(minutes=cfg.tz_offset_minutes)
    local = pl.lit(start) + pl.duration(seconds=pl.col("t_sec"))
    out = (
        raw.join(pois, on="poi", how="left")
        .join(cats, on="cat", how="left")
        .with_columns(local_time=local.dt.cast_time_unit("us"))
        .with_columns(
            utc_time=(pl.col("local_time") - offset).dt.replace_time_zone("UTC"),
            user_id=(pl.col("user") + 1).cast(pl.String),
            timezone=pl.lit(cfg.tz_offset_minutes, dtype=pl.Int32),
        )
        .select(
            "user_id",
            "poi_id",
            "category_id",
            "category_name",
            "latitude",
            "longitude",
            "local_time",
            "utc_time",
            "timezone",
        )
        .sort("user_id", "utc_time", maintain_order=True)
    )
    logger.info(
        "synthesized a city of %d users, %d POIs, %d neighbourhoods: %d check-ins (%s)",
        cfg.n_users,
        n_pois,
        n_nbhd,
        out.height,
        {k: v for k, v in asdict(cfg).items() if k not in ("n_users", "progress")},
    )
    return out


def _simulate_chunk(
    rng: np.random.Generator,
    cfg: CityConfig,
    *,
    users: np.ndarray,
    n_cat: int,
    n_nbhd: int,
    parent_of: np.ndarray,
    poi_nbhd: np.ndarray,
    sampler: _GroupSampler,
    trans: np.ndarray,
    affinity: np.ndarray,
    start_weekday: int,
) -> pl.DataFrame:
    n_u = len(users)
    # Users: anchors, taste, loyalty, rhythm.
    home_nb = rng.integers(0, n_nbhd, n_u)
    work_nb = np.where(rng.random(n_u) < 0.8, rng.integers(0, n_nbhd, n_u), home_nb)
    taste = rng.gamma(0.6, 1.0, (n_u, n_cat)) + 0.05
    loyalty = np.clip(rng.beta(6.0, 3.0, n_u) * cfg.revisit / (6.0 / 9.0), 0.0, 0.98)
    # Favourite POI per (user, category): home-ish categories near home, work-ish near work,
    # the rest near either.
    anchor_work = (parent_of[None, :] == 1) | (parent_of[None, :] == 2)
    anchor_home = parent_of[None, :] == 0
    near_work = np.where(anchor_work, True, np.where(anchor_home, False, rng.random((n_u, n_cat)) < 0.4))
    fav_nb = np.where(near_work, work_nb[:, None], home_nb[:, None])
    cat_grid = np.broadcast_to(np.arange(n_cat), (n_u, n_cat))
    fav = sampler.draw(rng, cat_grid.ravel(), fav_nb.ravel()).reshape(n_u, n_cat)

    total = rng.lognormal(np.log(cfg.checkins_per_user) - 0.18, 0.6, n_u)
    p_day = np.clip(total / cfg.mean_daily_checkins / cfg.n_days, 0.0, 1.0)
    weekend_taste = rng.lognormal(0.0, 0.4, n_u)
    days = np.arange(cfg.n_days)
    is_weekend = ((start_weekday + days) % 7) >= 5
    p_ud = p_day[:, None] * np.where(is_weekend[None, :], weekend_taste[:, None], 1.0)
    active = rng.random((n_u, cfg.n_days)) < np.clip(p_ud, 0.0, 1.0)
    t_user, t_day = np.nonzero(active)
    n_t = len(t_user)
    if n_t == 0:
        return pl.DataFrame(
            {"user": [], "poi": [], "t_sec": []}, schema={"user": pl.Int64, "poi": pl.Int64, "t_sec": pl.Int64}
        )
    t_weekend = is_weekend[t_day].astype(np.int64)
    lam = rng.gamma(4.0, (cfg.mean_daily_checkins - 1.0) / 4.0 + 1e-9, n_u)
    length = np.minimum(1 + rng.poisson(lam[t_user]), cfg.max_daily_checkins)
    start_habit = rng.normal(8.0, 1.2, n_u)
    hour = start_habit[t_user] + np.where(t_weekend == 1, 2.5, 0.0) + rng.normal(0.0, 1.0, n_t)
    hour = np.clip(hour, 0.0, 22.0)

    prev_cat = np.zeros(n_t, dtype=np.int64)  # every outing starts from home
    prev_nb = home_nb[t_user]
    out_user, out_poi, out_sec = [], [], []
    for k in range(int(length.max())):
        live = np.nonzero(length > k)[0]
        if len(live) == 0:
            break
        u = t_user[live]
        bucket = np.searchsorted(_HOUR_EDGES, hour[live] % 24.0, side="right")
        probs = trans[prev_cat[live]] * affinity[t_weekend[live], bucket] * taste[u]
        cat = _sample_rows(rng, probs)
        revisit = rng.random(len(live)) < loyalty[u] * np.where(parent_of[cat] <= 2, 1.3, 1.0)
        stay = rng.random(len(live)) < cfg.local
        explore_local = sampler.draw(rng, cat, prev_nb[live])
        explore_city = sampler.draw(rng, cat, None)
        poi = np.where(revisit, fav[u, cat], np.where(stay, explore_local, explore_city))
        out_user.append(users[u])
        out_poi.append(poi)
        out_sec.append((t_day[live] * 86400 + hour[live] * 3600.0).astype(np.int64))
        prev_cat[live] = cat
        prev_nb[live] = poi_nbhd[poi]
        hour[live] += 0.25 + rng.exponential(1.6, len(live))
    return pl.DataFrame(
        {
            "user": np.concatenate(out_user),
            "poi": np.concatenate(out_poi),
            "t_sec": np.concatenate(out_sec),
        }
    )
