"""The tenant zoo's loaders read real data from installed packages into the silolearn schema:
unique ids, time order, the labels and hardness their docstrings promise."""

from __future__ import annotations

from collections import Counter

import pytest

from silolearn import datasets
from silolearn.records import Record
from silolearn.text import normalise

NEW = [name for name in datasets.ZOO if name not in datasets.DATASETS]


@pytest.mark.parametrize("name", NEW)
def test_zoo_loader_gives_valid_unique_records_in_time_order(name: str) -> None:
    rows = datasets.ZOO[name]()
    assert len({r["id"] for r in rows}) == len(rows)
    stamps = [r["timestamp"] for r in rows]
    assert stamps == sorted(stamps)
    for row in rows:
        Record.model_validate(row)
    assert rows == datasets.ZOO[name](), "a loader is deterministic"


def test_zoo_tenants_are_hard_in_the_ways_they_claim() -> None:
    dialogue = datasets.chatterbot_dialogues()
    labels = Counter(r["label"] for r in dialogue)
    assert len(labels) == 21
    texts = Counter(normalise(r["text"]) for r in dialogue)
    assert sum(n for n in texts.values() if n > 1) > len(dialogue) / 2, "texts repeat"

    kaomoji = datasets.kaomoji()
    assert len({r["label"] for r in kaomoji}) >= 30
    assert sorted(len(r["text"]) for r in kaomoji)[len(kaomoji) // 2] <= 10

    mortgages = Counter(r["label"] for r in datasets.mortgage_applications())
    assert mortgages["denied"] / sum(mortgages.values()) < 0.15
    benefits = datasets.unemployment_benefits()
    assert benefits[0]["text"].startswith("age: ")
    assert {r["label"] for r in benefits} == {"insured", "not insured"}

    debates = Counter(r["label"] for r in datasets.debate_statements())
    assert {"TRUMP", "CLINTON", "PENCE", "KAINE"} <= set(debates)
