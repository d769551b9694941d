"""One client process of the load test (tests/service/test_load.py): predict, feedback on
half of what it was served, and ingest, in turn, until its time is up; it writes what the
server reported stored as JSON.

A request whose answer is lost (the connection refused, reset or cut, as when the server is
killed) is sent again, the same body, until an answer comes or the grace period ends: the
client cannot know whether the first one was stored, so it relies on ingest and feedback
being idempotent (records keyed by id; feedback keyed by its prediction id).

Usage: ``load_client.py URL READER CONTRIBUTOR TENANT NAME SECONDS OUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TEXTS = [
    "A warm, funny and moving film.",
    "Two hours I will never get back.",
    "The cast is wonderful and the script sharp.",
    "Tedious, overlong and badly acted.",
    "An unexpected delight from start to finish.",
]
GRACE = 90.0
"""Seconds after the end during which a lost answer is still retried."""


RESENT = [0]
"""Requests sent again because the answer to the previous send was lost."""


def send(client: httpx.Client, deadline: float, *args: Any, **kwargs: Any) -> httpx.Response | None:
    """The answer to one request, sent again while its answer is lost."""
    while True:
        try:
            return client.request(*args, **kwargs)
        except httpx.TransportError:
            if time.monotonic() > deadline + GRACE:
                return None
            RESENT[0] += 1
            time.sleep(0.2)


def stored_under_its_id(answer: dict[str, Any]) -> bool:
    """Feedback stored now, or given again after a lost answer (stored the first time);
    not feedback whose text is in training under another id (stored under none of its own)."""
    return answer["outcome"] == "stored" or (
        answer["outcome"] == "duplicate" and not answer["repeats"]
    )


def main() -> None:
    url, reader, contributor, tenant, name, seconds, out = sys.argv[1:8]
    deadline = time.monotonic() + float(seconds)
    stored: list[str] = []
    """Record ids the server answered as stored (accepted now, or a duplicate of before)."""
    counts = {"predict": 0, "feedback": 0, "ingest": 0, "other": 0, "lost": 0}
    read = {"Authorization": f"Bearer {reader}"}
    write = {"Authorization": f"Bearer {contributor}"}
    n = 0
    with httpx.Client(base_url=url, timeout=120.0) as client:
        while time.monotonic() < deadline:
            n += 1
            # texts of their own: feedback on a text already in training under another id
            # would be counted a repeat, not stored under its own id
            texts = [f"{TEXTS[(n + i) % len(TEXTS)]} ({name} {n}.{i})" for i in range(1 + n % 3)]
            r = send(
                client, deadline, "POST", f"/v1/tenants/{tenant}/predict", json={"texts": texts},
                headers=read,
            )  # fmt: skip
            if r is None:
                counts["lost"] += 1
                continue
            if r.status_code != 200:
                counts["other"] += 1
                continue
            counts["predict"] += 1
            for i, p in enumerate(r.json()["predictions"]):
                if i % 2:
                    continue
                label = "fresh" if n % 2 else "rotten"
                f = send(
                    client, deadline, "POST", f"/v1/tenants/{tenant}/feedback",
                    json={"prediction_id": p["prediction_id"], "label": label}, headers=write,
                )  # fmt: skip
                if f is not None and f.status_code == 200 and stored_under_its_id(f.json()):
                    counts["feedback"] += 1
                    stored.append(f.json()["record_id"])
                else:
                    counts["lost" if f is None else "other"] += 1
            ids = [f"load-{name}-{n}-{i}" for i in range(4)]
            lines = [
                json.dumps(
                    {
                        "id": i,
                        "text": f"{TEXTS[n % len(TEXTS)]} Seen by {i}.",
                        "label": "fresh" if n % 2 else "rotten",
                        "timestamp": "2025-07-01T00:00:00Z",
                    }
                )
                for i in ids
            ]
            g = send(
                client, deadline, "POST", f"/v1/tenants/{tenant}/records",
                content="\n".join(lines).encode(),
                headers={**write, "content-type": "application/x-ndjson"},
            )  # fmt: skip
            if g is not None and g.status_code == 200 and not g.json()["errors"]:
                counts["ingest"] += 1
                stored.extend(ids)
            else:
                counts["lost" if g is None else "other"] += 1
    counts["resent"] = RESENT[0]
    Path(out).write_text(json.dumps({"stored": stored, "counts": counts}))


if __name__ == "__main__":
    main()
