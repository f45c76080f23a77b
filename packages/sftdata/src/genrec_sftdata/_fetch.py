"""Downloads of the public data sets genrec's configs use, into ``cache_dir()/datasets``.

Every file is fetched once: resumed with HTTP ``Range`` when a transfer breaks, recorded (size, sha256)
in ``datasets/registry.json`` on its first download and verified against that record whenever it is
used again, moved into place atomically, under a folder lock. Hub data sets go through
``genrec_core.models.resolve_dataset`` (the Hugging Face cache). ``GENREC_DATA_MIRROR`` (or
``base_url=``) points every URL source at ``{mirror}/{dataset}/{file}`` instead of its upstream host.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec_core import FolderLock, atomic_write, atomic_write_json, cache_dir, sha256_file
from genrec_sftdata._errors import SftDataError

logger = logging.getLogger(__name__)

MIRROR_ENV = "GENREC_DATA_MIRROR"
OFFLINE_ENV = "GENREC_OFFLINE"
REGISTRY = "registry.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataSource:
    """One fetchable data set: a list of URL files, or one Hugging Face hub data set."""

    name: str
    kind: str  # reader used by --prepare: movielens-100k, movielens-1m, tsmc, gowalla, amazon, bookcrossing, llm4poi, genup, hub
    description: str
    urls: tuple[str, ...] = ()
    hub_id: str | None = None
    page: str = ""  # where the URLs are documented
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(u.rsplit("/", 1)[-1] for u in self.urls)


_AMAZON18 = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
_AMAZON14 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
_AMAZON_PAGE = "https://nijianmo.github.io/amazon/index.html (2018); http://jmcauley.ucsd.edu/data/amazon/index_2014.html (2014)"
_GENUP_PAGE = "https://github.com/w11wo/GenUP (README, dataset table)"
_STEPS_PAGE = "https://github.com/cruiseresearchgroup/Massive-STEPS (README, dataset table)"


def _amazon(name: str, category: str, domain: str, description: str) -> list[DataSource]:
    return [
        DataSource(
            name, "amazon", f"{description} (Amazon 2018, 5-core reviews + metadata)",
            urls=(f"{_AMAZON18}/categoryFilesSmall/{category}_5.json.gz", f"{_AMAZON18}/metaFiles2/meta_{category}.json.gz"),
            page=_AMAZON_PAGE, options={"domain": domain},
        ),
    ]


def _amazon14(name: str, category: str, domain: str, description: str) -> DataSource:
    return DataSource(
        name, "amazon", f"{description} (Amazon 2014, 5-core reviews + metadata)",
        urls=(f"{_AMAZON14}/reviews_{category}_5.json.gz", f"{_AMAZON14}/meta_{category}.json.gz"),
        page=_AMAZON_PAGE, options={"domain": domain},
    )


_SOURCES: list[DataSource] = [
    DataSource("movielens-100k", "movielens-100k", "MovieLens 100K (u.data, u.item)",
               urls=("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
               page="https://grouplens.org/datasets/movielens/100k/"),
    DataSource("movielens-1m", "movielens-1m", "MovieLens 1M (ratings.dat, movies.dat)",
               urls=("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
               page="https://grouplens.org/datasets/movielens/1m/"),
    DataSource("foursquare-nyc", "tsmc", "Foursquare TSMC2014 check-ins, New York",
               urls=("http://www-public.imtbs-tsp.eu/~zhang_da/pub/dataset_tsmc2014.zip",),
               page="https://sites.google.com/site/yangdingqi/home/foursquare-dataset",
               options={"member": "dataset_TSMC2014_NYC.txt"}),
    DataSource("foursquare-tky", "tsmc", "Foursquare TSMC2014 check-ins, Tokyo",
               urls=("http://www-public.imtbs-tsp.eu/~zhang_da/pub/dataset_tsmc2014.zip",),
               page="https://sites.google.com/site/yangdingqi/home/foursquare-dataset",
               options={"member": "dataset_TSMC2014_TKY.txt"}),
    DataSource("gowalla", "gowalla", "Gowalla total check-ins (SNAP)",
               urls=("https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz",),
               page="https://snap.stanford.edu/data/loc-gowalla.html"),
    *_amazon("amazon-games", "Video_Games", "games", "Amazon Video Games"),
    *_amazon("amazon-movies", "Movies_and_TV", "movies", "Amazon Movies and TV"),
    # GORACS's Food counts (14,681 users, 8,713 items, 151,254 reviews) are the 2014 5-core, and its
    # Food metadata regexes expect the 2014 Python-literal lines: Food is the 2014 release.
    _amazon14("amazon-food", "Grocery_and_Gourmet_Food", "food", "Amazon Grocery and Gourmet Food"),
    *_amazon("amazon2018-food", "Grocery_and_Gourmet_Food", "food", "Amazon Grocery and Gourmet Food"),
    _amazon14("amazon2014-games", "Video_Games", "games", "Amazon Video Games"),
    _amazon14("amazon2014-movies", "Movies_and_TV", "movies", "Amazon Movies and TV"),
    DataSource("bookcrossing", "bookcrossing", "Book-Crossing (BX-Book-Ratings.csv, BX-Books.csv), as TALLRec reads it",
               urls=("http://www2.informatik.uni-freiburg.de/~cziegler/BX/BX-CSV-Dump.zip",),
               page="http://www2.informatik.uni-freiburg.de/~cziegler/BX/ (offline upstream: use a mirror)"),
    *[
        DataSource(f"llm4poi-{city}", "llm4poi", f"LLM4POI's preprocessed {city.upper()} check-ins (hub)",
                   hub_id="w11wo/LLM4POI", page=_GENUP_PAGE, options={"city": city})
        for city in ("nyc", "tky", "ca")
    ],
    *[
        DataSource(f"genup-{city.lower()}", "genup", f"GenUP SFT records, {label} (hub)", hub_id=f"w11wo/{repo}",
                   page=_GENUP_PAGE)
        for city, label, repo in [
            ("NYC", "FourSquare NYC", "FourSquare-NYC-POI"),
            ("TKY", "FourSquare Tokyo", "FourSquare-TKY-POI"),
            ("CA", "Gowalla California", "Gowalla-CA-POI"),
            ("Moscow", "FourSquare Moscow", "FourSquare-Moscow-POI"),
            ("SaoPaulo", "FourSquare Sao Paulo", "FourSquare-SaoPaulo-POI"),
        ]
    ],
    *[
        DataSource(f"massive-steps-{city.lower()}", "hub", f"Massive-STEPS {city.replace('-', ' ')} (hub)",
                   hub_id=f"CRUISEResearchGroup/Massive-STEPS-{city}", page=_STEPS_PAGE)
        for city in ["Bandung", "Beijing", "Istanbul", "Jakarta", "Kuwait-City", "Melbourne", "Moscow", "New-York",
                     "Palembang", "Petaling-Jaya", "Sao-Paulo", "Shanghai", "Sydney", "Tangerang", "Tokyo"]
    ],
]
SOURCES: dict[str, DataSource] = {s.name: s for s in _SOURCES}


def list_datasets() -> list[DataSource]:
    """Every data set :func:`fetch` knows, in a stable order."""
    return list(_SOURCES)


def datasets_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """``cache`` or ``genrec_core.cache_dir()/datasets``."""
    return Path(cache).expanduser() if cache is not None else cache_dir() / "datasets"


def _source(name: str) -> DataSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise SftDataError(f"fetch: unknown data set {name!r}; known: {', '.join(SOURCES)}") from None


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def _url_for(source: DataSource, url: str, base_url: str | None) -> str:
    mirror = base_url if base_url is not None else os.environ.get(MIRROR_ENV) or None
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{source.name}/{url.rsplit('/', 1)[-1]}"


class _Registry:
    """``registry.json``: what each cached file was when first downloaded (size, sha256, URL)."""

    def __init__(self, root: Path) -> None:
        self.path = root / REGISTRY

    def load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SftDataError(f"{self.path}: not valid JSON ({exc}); delete it to re-record checksums") from exc
        return data if isinstance(data, dict) else {}

    def record(self, key: str, entry: dict[str, Any]) -> None:
        # The registry is shared by every data set folder: its own lock keeps concurrent fetches of
        # different data sets from losing each other's entries.
        with FolderLock(self.path.parent / ".registry-lock", what="dataset registry"):
            data = self.load()
            data[key] = entry
            atomic_write_json(self.path, data, sort_keys=True)


def _verify(path: Path, entry: dict[str, Any]) -> None:
    size = path.stat().st_size
    if size != entry["size"]:
        raise SftDataError(
            f"{path}: cached file is {size} bytes but {entry['size']} were recorded when it was downloaded from "
            f"{entry.get('url')}; it is corrupted or truncated: delete it (or fetch with --force) to download it again"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise SftDataError(
            f"{path}: sha256 {digest} does not match {entry['sha256']} recorded when it was downloaded from "
            f"{entry.get('url')}; the cached file is corrupted: delete it (or fetch with --force) to download it again"
        )


def _download(url: str, target: Path, *, retries: int, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``target``'s ``.part`` file, resuming with Range, then move it into place."""
    part = target.with_name(f".{target.name}.part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "genrec-sftdata"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                if have and status == 206:
                    mode, total = "ab", _total_from_range(response.headers.get("Content-Range"), have, response)
                elif have and status == 416:
                    # The part file already holds every byte (the break came after the last one).
                    mode, total = "ab", have
                else:
                    mode, have = "wb", 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                with part.open(mode) as fh:
                    got = have
                    shown = time.monotonic()
                    for block in iter(lambda: response.read(_CHUNK), b""):
                        fh.write(block)
                        got += len(block)
                        if progress and time.monotonic() - shown > 2:
                            shown = time.monotonic()
                            logger.warning("%s: %d%s bytes", target.name, got, f"/{total}" if total else "")
                if total is not None and got < total:
                    raise http.client.IncompleteRead(b"", total - got)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                break
            raise SftDataError(f"fetch: {url} answered HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
            attempt += 1
            if attempt > retries:
                reason = getattr(exc, "reason", None) or exc
                raise SftDataError(
                    f"fetch: cannot download {url} ({type(exc).__name__}: {reason}); "
                    f"{part.stat().st_size if part.exists() else 0} bytes kept in {part} and resumed next time. "
                    f"Offline? Download the URL on a machine with network and put the file at {target}"
                ) from exc
            logger.warning("fetch: %s broke off (%s); resuming (try %d of %d)", url, exc, attempt, retries)
            time.sleep(min(0.2 * attempt, 2.0))

    def move(tmp: Path) -> None:
        os.replace(part, tmp)

    atomic_write(target, move)


def _total_from_range(header: str | None, have: int, response: Any) -> int | None:
    if header and "/" in header:
        tail = header.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    length = response.headers.get("Content-Length")
    return have + int(length) if length is not None else None


def fetch(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    force: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download data set ``name`` (see :func:`list_datasets`) into the cache and return its folder.

    URL sources land in ``<cache>/<name>/<file>``; a hub source returns its Hugging Face snapshot folder.
    A file already cached is verified against the size and sha256 recorded at its first download (a
    mismatch raises, naming the file; ``force=True`` downloads it again). Offline (``GENREC_OFFLINE``
    or ``HF_HUB_OFFLINE``), a file not yet cached raises one line naming its URL and where to put it.
    """
    source = _source(name)
    if source.hub_id is not None:
        from genrec_core.models import resolve_dataset

        try:
            return Path(resolve_dataset(source.hub_id))
        except Exception as exc:
            raise SftDataError(f"fetch {name}: {exc}") from exc
    root = datasets_dir(cache)
    folder = root / source.name
    registry = _Registry(root)
    with FolderLock(folder, what=f"dataset folder for {name}"):
        for upstream in source.urls:
            url = _url_for(source, upstream, base_url)
            target = folder / upstream.rsplit("/", 1)[-1]
            key = f"{source.name}/{target.name}"
            entry = registry.load().get(key)
            if target.exists() and not force:
                if entry is None:
                    # A file put there by hand: trust it, and pin what it is from now on.
                    logger.info("fetch: %s was placed by hand; recording its checksum", target)
                    registry.record(key, _entry(target, upstream, "placed by hand"))
                else:
                    _verify(target, entry)
                continue
            if _offline():
                raise SftDataError(
                    f"fetch {name}: {target.name} is not in the cache and offline mode is on ({OFFLINE_ENV}/"
                    f"HF_HUB_OFFLINE); download {url} on a machine with network and put it at {target}"
                )
            if force:
                target.unlink(missing_ok=True)
            logger.info("fetch: %s -> %s", url, target)
            _download(url, target, retries=retries, timeout=timeout, progress=progress)
            fresh = _entry(target, upstream, url)
            if entry is not None and (entry["size"], entry["sha256"]) != (fresh["size"], fresh["sha256"]):
                bad = target.with_name(f".{target.name}.mismatch")
                os.replace(target, bad)
                raise SftDataError(
                    f"fetch {name}: {url} now serves a different file (sha256 {fresh['sha256']}, {fresh['size']} "
                    f"bytes) than was recorded ({entry['sha256']}, {entry['size']} bytes); kept as {bad}. Delete "
                    f"its entry {key!r} in {registry.path} to accept the new file"
                )
            if entry is None:
                registry.record(key, fresh)
    return folder


def _entry(path: Path, upstream: str, fetched_from: str) -> dict[str, Any]:
    return {
        "url": upstream,
        "fetched_from": fetched_from,
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def verify(name: str, *, cache: str | os.PathLike[str] | None = None) -> Path:
    """Check every cached file of ``name`` against the registry; raise on the first mismatch or absence."""
    source = _source(name)
    root = datasets_dir(cache)
    entries = _Registry(root).load()
    for fname in source.files:
        target = root / source.name / fname
        entry = entries.get(f"{source.name}/{fname}")
        if not target.is_file() or entry is None:
            raise SftDataError(f"verify {name}: {target} is not cached yet (run `genrec-sftdata fetch {name}`)")
        _verify(target, entry)
    return root / source.name


def extracted(archive: Path, member: str, *, into: Path | None = None) -> Path:
    """``member`` of a zip archive (matched by its base name), or a ``.gz`` file, decompressed once
    beside it under ``_extracted/`` (atomically, so a reader never sees half a file)."""
    import gzip
    import zipfile

    out_dir = into or archive.parent / "_extracted"
    target = out_dir / member
    if target.is_file() and target.stat().st_mtime_ns >= archive.stat().st_mtime_ns:
        return target
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member]
            if not names:
                raise SftDataError(f"{archive}: no member named {member!r}; members: {zf.namelist()[:20]}")

            def write(tmp: Path) -> None:
                with zf.open(names[0]) as src, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)

            return atomic_write(target, write)
    if archive.suffix == ".gz":

        def write_gz(tmp: Path) -> None:
            with gzip.open(archive, "rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)

        return atomic_write(target, write_gz)
    raise SftDataError(f"{archive}: not a .zip or .gz archive")


def zip_members(archive: Path) -> list[str]:
    import zipfile

    with contextlib.closing(zipfile.ZipFile(archive)) as zf:
        return zf.namelist()
