"""``silolearn demo --days N``: simulated days of production after the rounds, with the
scheduler on and canary rollouts, on a manual clock so that days take the time their
traffic and rounds take.

The service is the same application as ``silolearn serve`` (``service.app``), served on a
free loopback port from this process, started with a manual clock (``Running.start(clock=
...)``) that the simulation advances a day at a time and then ticks the scheduler and the
rollouts (``Running.tick``). Everything a tenant's application does goes over HTTP:
predict with a request key (a user id: a canary's cohort is sticky), feedback by
``prediction_id``, the schedule policy, rounds and versions. The settings are the
workspace's defaults with two switches turned on, said out loud: ``[rollout] mode =
"canary"`` and each days tenant's triggers (``drift``, ``performance``).

Two tenants join for the days:

- ``health-wire`` (health-news tweets, label = outlet) learns its first version from the
  first half of 2013; its users' traffic comes from that period on day 1 and from
  mid-2014 on from day 2, when outlets that did not exist in 2013 tweet and others have
  stopped: the drift and performance monitors see it, a trigger starts a round, and the
  candidate goes through the canary;
- ``drill-desk`` (film-review snippets, label = fresh/rotten/plot) is the **drill**: its
  first version is honest; then a batch with a planted label-mapping bug (each label
  replaced by the next, every record marked ``meta.drill``) is ingested with timestamps
  inside the first version's window, so the bug's records also fill the eval window (its
  eval share carries the same bug: the *planted easy eval window*), and a round started
  by hand trains on it. The offline gates judge on that window and pass; live feedback on
  the canary tells the truth and rolls it back. The drill is audited as such
  (``demo.drill``) before anything is planted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.markup import escape

from silolearn.clock import SYSTEM, ManualClock
from silolearn.config import CONFIG_FILE
from silolearn.datasets import health_tweets, rotten_tomatoes, sample
from silolearn.demo.client import ApiClient, free_port
from silolearn.errors import InvalidInput, WorkspaceError
from silolearn.ingest.gateway import Gateway
from silolearn.operations.times import stamp
from silolearn.workspace import Workspace

Row = dict[str, Any]
Say = Callable[..., None]

WIRE = "health-wire"
DRILL = "drill-desk"
FIRST_PERIOD = ("2013-01-01", "2013-07-01")
"""What health-wire's first version learns from, and its users' traffic on day 1."""
LATER_PERIOD = ("2014-07-01", "2015-12-31")
"""Its users' traffic from day 2 on: outlets come and go (a real shift, not a planted one)."""
TRIGGERS = ["drift", "performance"]
REQUEST_TEXTS = 4
"""Texts per predict request: one user's, under one request key."""
USERS = 5000
STABLE_LABEL_SHARE = 0.25
"""The applications return the true label of every answer a canary gave (the rollout is
judged on them) and of this share of the others."""
SEED = 23
DRILL_DAY = 2
"""The drill's round starts on the morning of day 2: after a day of serving, so that what
the stable version's own monitors had to say on their first day (an incident rolls a
canary back) is said before the drill's canary starts."""
DAY_TRAFFIC = 2000
"""Texts health-wire's users send a day (the drill's, half as many, on the first day and
while its canary runs)."""
USERS_AT_ONCE = 8
REVIEWS = 8000
"""The stretch of film reviews the drill's tenant lives on."""
PARTS = 4
"""A day's traffic comes in this many parts, the clock moving a quarter of a day after each,
the scheduler and the rollouts ticking then (a rollout's step lasts an hour at least)."""
FIRST_RECORDS = 400
"""Records each days tenant's first version learns from (about 40 of them go to its eval
store: enough for a first version to be shown better than the constant answer)."""
PLANTED_RATIO = 4
"""The drill's planted eval records per honest one the tenant holds."""


def configure_canary(path: Path) -> None:
    """Turn canary rollouts on in the workspace's settings (``[rollout] mode``), the one
    setting the days change; the service reads it when it starts."""
    with Workspace.open(path, actor="demo") as ws:
        settings = ws.settings
    rollout = settings.rollout.model_copy(update={"mode": "canary"})
    (path / CONFIG_FILE).write_text(
        settings.model_copy(update={"rollout": rollout}).to_toml(), encoding="utf-8"
    )


def _between(rows: list[Row], period: tuple[str, str]) -> list[Row]:
    return [r for r in _texts(rows) if period[0] <= r["timestamp"] < period[1]]


def _texts(rows: list[Row]) -> list[Row]:
    """The rows with a text (a few of the datasets' are empty: no user sends those)."""
    return [r for r in rows if str(r["text"]).strip()]


def streams() -> dict[str, Any]:
    """The days' data: first versions' records, the drill's planted batch, and the held-out
    texts the applications send (none of them ever ingested)."""
    tweets = health_tweets()
    first = _between(tweets, FIRST_PERIOD)
    later = _between(tweets, LATER_PERIOD)
    wire_train = sample(first, FIRST_RECORDS, seed=SEED)
    seen = {r["id"] for r in wire_train}
    first_rest = [r for r in first if r["id"] not in seen]
    # the reviews are grouped by film: the drill's records, traffic and batch come from one
    # stretch of them, so its traffic is like what its first version learned from
    reviews = _texts(rotten_tomatoes())[:REVIEWS]
    honest = sample(reviews, FIRST_RECORDS, seed=SEED)
    taken = {r["id"] for r in honest}
    rest = [r for r in reviews if r["id"] not in taken]
    random.Random(SEED).shuffle(rest)
    traffic_n = len(rest) // 2
    return {
        "wire_train": wire_train,
        "wire_day1": first_rest,
        "wire_later": later,
        "drill_honest": honest,
        "drill_traffic": rest[:traffic_n],
        "drill_plant": rest[traffic_n:],
    }


def plant_label_bug(rows: list[Row], labels: list[str], until: str) -> list[Row]:
    """The drill's batch: each label replaced by the next in ``labels`` (a label-mapping
    bug), timestamps moved inside the first version's window (at or before ``until``), so
    the batch's eval share lands in the window the gates judge on; every record says it is
    a drill."""
    shifted = {label: labels[(i + 1) % len(labels)] for i, label in enumerate(labels)}
    moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
    planted = []
    for i, row in enumerate(rows):
        at = moment - timedelta(seconds=len(rows) - i)
        planted.append(
            {
                **row,
                "id": f"drill-{row['id']}",
                "label": shifted[str(row["label"])],
                "timestamp": stamp(at),
                "meta": {**(row.get("meta") or {}), "drill": "label-mapping bug"},
            }
        )
    return planted


class InProcessServer:
    """The service's application on a free loopback port, served by uvicorn in a thread of
    this process, on a manual clock."""

    def __init__(self, path: Path, clock: ManualClock) -> None:
        import uvicorn

        from silolearn.service.app import Running, create_app

        self.clock = clock
        self.running = Running.start(path, clock=clock)
        port = free_port()
        config = uvicorn.Config(
            create_app(path, running=self.running),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, name="days-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120.0
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.running.stop()
                raise WorkspaceError("the days' server did not start")
            time.sleep(0.05)

    def settle(self) -> None:
        """Wait until the drift monitor has handled what was served."""
        drift = self.running.service.drift
        if drift is not None:
            drift.join()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=300.0)
        self.running.stop()


# -- traffic -------------------------------------------------------------------------------


def serve_part(
    api: ApiClient, tenant: str, rows: list[Row], moment: tuple[int, int], canaries: set[int]
) -> Row:
    """One part of a day (``moment`` is the day and the part) of a tenant's users,
    ``USERS_AT_ONCE`` at a time: requests of a few texts under a user's key, each answer's
    true label returned when the answer came from a canary, or for a share of the others.
    Each part draws its own users: drawn once a day, the same few users would come back in
    every part, and a day would bring a small cohort's users all four times or not at all."""
    day, part = moment
    rng = random.Random(f"{tenant}:{day}:{part}")
    requests = [
        (f"user-{rng.randrange(USERS)}", rows[start : start + REQUEST_TEXTS])
        for start in range(0, len(rows), REQUEST_TEXTS)
    ]
    labelled = [rng.random() < STABLE_LABEL_SHARE for _ in rows]

    def one(request: tuple[str, list[Row]]) -> list[tuple[Row, Row]]:
        user, batch = request
        got = api.predict(tenant, [r["text"] for r in batch], request_key=user)
        return list(zip(batch, got, strict=True))

    def label(item: tuple[Row, Row]) -> bool:
        try:
            api.feedback(tenant, item[1]["prediction_id"], str(item[0]["label"]))
        except InvalidInput:  # refused by the gateway (e.g. a near-copy of an eval text)
            return False
        return True

    with ThreadPoolExecutor(max_workers=USERS_AT_ONCE) as pool:
        answered = [pair for pairs in pool.map(one, requests) for pair in pairs]
        chosen = [
            pair
            for pair, share in zip(answered, labelled, strict=True)
            if share or int(pair[1]["version"]) in canaries
        ]
        sent = list(pool.map(label, chosen))
    given = {p[1]["prediction_id"]: ok for p, ok in zip(chosen, sent, strict=True)}
    tally: Row = {"tenant": tenant, "day": day, "served": len(answered), "feedback": 0}
    per_version: dict[int, list[int]] = {}
    for row, answer in answered:
        counts = per_version.setdefault(int(answer["version"]), [0, 0, 0])
        counts[0] += 1
        counts[1] += str(row["label"]) == answer["label"]
        counts[2] += given.get(answer["prediction_id"], False)
    tally["feedback"] = sum(c[2] for c in per_version.values())
    tally["versions"] = {
        str(v): {"served": c[0], "accuracy": round(c[1] / c[0], 4), "feedback": c[2]}
        for v, c in sorted(per_version.items())
    }
    return tally


def canary_versions(api: ApiClient, tenant: str) -> set[int]:
    return {
        int(v["version"])
        for v in api.versions(tenant)
        if (v.get("rollout") or {}).get("role") == "canary"
        and (v.get("rollout") or {}).get("state") == "running"
    }


# -- the timeline --------------------------------------------------------------------------

TIMELINE_ACTIONS = (
    "monitor.signal",
    "schedule.trigger",
    "schedule.skip",
    "schedule.finished",
    "rollout.start",
    "rollout.step",
    "rollout.promote",
    "rollout.rollback",
    "demo.drill",
)


def _summary(action: str, details: Row) -> str:
    if action == "schedule.trigger":
        evidence = details.get("evidence") or {}
        signals = evidence.get("signals") or []
        kinds = sorted({s.get("kind") for s in signals if s.get("kind")})
        return f"{details.get('trigger')} trigger ({', '.join(kinds) or 'evidence'}): round"
    if action == "schedule.skip":
        return f"{details.get('trigger')} trigger held back: {details.get('reason')}"
    if action == "schedule.finished":
        return f"round ended: {details.get('outcome')} (v{details.get('version')})"
    if action == "monitor.signal":
        return f"{details.get('kind')} signal, v{details.get('version')}"
    if action.startswith("rollout."):
        canary, stable = details.get("canary") or {}, details.get("stable") or {}
        diff = details.get("difference")
        said = f"{action.removeprefix('rollout.')} v{canary.get('version', details.get('v'))}"
        if "share" in details:
            said += f" at {float(details['share']):.0%}"
        if canary.get("feedback") is not None:
            said += (
                f"; canary {canary.get('correct')}/{canary.get('feedback')} right, stable "
                f"{stable.get('correct')}/{stable.get('feedback')}, difference {diff}"
            )
        if details.get("decision") or details.get("reason"):
            said += f" ({details.get('decision') or details.get('reason')})"
        return said
    return str(details.get("what", action))


def collect_events(
    ws: Workspace, tenants: list[str], since_seq: int, day: int, at: str
) -> list[Row]:
    """The days tenants' audit events after ``since_seq`` that make the timeline."""
    found = []
    events = [e for name in tenants for e in ws.audit.events(tenant=name)]
    for event in sorted(events, key=lambda e: e.seq):
        if event.seq <= since_seq or event.action not in TIMELINE_ACTIONS:
            continue
        found.append(
            {
                "seq": event.seq,
                "day": day,
                "at": at,
                "tenant": event.tenant,
                "action": event.action,
                "summary": _summary(
                    event.action, {"v": (event.object or "").removeprefix("v"), **event.details}
                ),
                "details": event.details,
            }
        )
    return found


def last_seq(ws: Workspace) -> int:
    (seq,) = ws.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()
    return int(seq)


# -- the days ------------------------------------------------------------------------------


def _first_versions(api: ApiClient, ws: Workspace, data: dict[str, Any], say: Say) -> Row:
    """Each days tenant's records through the gateway, then its first round over the API."""
    gateway = Gateway(ws)
    gateway.ingest(WIRE, data["wire_train"])
    gateway.ingest(DRILL, data["drill_honest"])
    jobs = {name: api.start_round(name) for name in (WIRE, DRILL)}
    made = {}
    for name, job in jobs.items():
        done = api.wait_for_job(name, job["id"])
        if done.get("version") is None or done.get("outcome") != "active":
            raise WorkspaceError(f"{name}: its first round did not make a version: {done}")
        made[name] = api.version(name, int(done["version"]))
        say(
            f"{name}: v{done['version']} serves (accuracy "
            f"{made[name]['metrics'].get('accuracy', 0):.3f} on its eval window)"
        )
    return made


def _drill(api: ApiClient, ws: Workspace, data: dict[str, Any], first: Row, say: Say) -> Row:
    """Plant the label-mapping bug and start the drill's round by hand; its outcome. The
    batch is sized so that its eval share (``[ingest] eval_fraction``) is ``PLANTED_RATIO``
    times the eval records the tenant holds: the planted window outweighs the honest one."""
    labels = sorted({str(r["label"]) for r in data["drill_honest"]})
    cutoff = str(first["lineage"]["cutoff"])
    held = ws.tenants.stats(ws.tenants.get(DRILL))["eval"]
    size = round(PLANTED_RATIO * held / ws.settings.ingest.eval_fraction)
    data["drill_plant"] = data["drill_plant"][:size]
    ws.audit.append(
        "demo.drill",
        tenant=DRILL,
        details={
            "what": "DRILL: a planted label-mapping bug (each label replaced by the next) in a "
            "batch whose eval share fills the eval window: the offline gates judge on the "
            "bug's labels; live feedback must roll the canary back",
            "records": len(data["drill_plant"]),
            "mapping": {label: labels[(i + 1) % len(labels)] for i, label in enumerate(labels)},
        },
    )
    planted = plant_label_bug(data["drill_plant"], labels, cutoff)
    report = Gateway(ws).ingest(DRILL, planted).to_dict()
    job = api.start_round(DRILL)
    done = api.wait_for_job(DRILL, job["id"])
    version = None if done.get("version") is None else api.version(DRILL, int(done["version"]))
    gates = [] if version is None else (version.get("decision") or {}).get("gates") or []
    passed = {str(g.get("gate")): bool(g.get("passed")) for g in gates}
    entry = {
        "planted": len(planted),
        "train": report.get("train"),
        "eval": report.get("eval"),
        "outcome": done.get("outcome"),
        "version": done.get("version"),
        "gates": passed,
        "accuracy_on_window": None if version is None else version["metrics"].get("accuracy"),
    }
    say(
        f"[bold yellow]DRILL[/] {DRILL}: {len(planted)} records with a planted label-mapping "
        f"bug ({report.get('train')} to train, {report.get('eval')} to the eval window, same "
        f"bug); its round by hand: {done.get('outcome')} v{done.get('version')}, offline gates "
        f"{sum(passed.values())}/{len(passed)} passed on the planted window"
    )
    return entry


def _traffic_for(
    data: dict[str, Any], day: int, per_day: int, drill_on: bool
) -> dict[str, list[Row]]:
    """Day ``day``'s held-out texts per tenant: health-wire's from 2013 on day 1, from the
    later period after; the drill's from reviews never ingested, on day 1 and while its
    canary runs."""
    wire = data["wire_day1"] if day == 1 else data["wire_later"]
    rng = random.Random(f"traffic:{day}")
    traffic = {WIRE: rng.sample(wire, min(per_day, len(wire)))}
    if drill_on:
        drill = data["drill_traffic"]
        traffic[DRILL] = rng.sample(drill, min(per_day // 2, len(drill)))
    return traffic


def _wait_for_rounds(api: ApiClient, decisions: list[Any]) -> None:
    for decision in decisions:
        if decision.decision == "trigger" and decision.job is not None:
            api.wait_for_job(decision.tenant, decision.job)


def _tenants_and_tokens(path: Path) -> dict[tuple[str | None, str], str]:
    """The days tenants, and per tenant its application's token (reader, contributor) and
    its trainer's, granted for the days."""
    tokens: dict[tuple[str | None, str], str] = {}
    with Workspace.open(path, actor="demo") as ws:
        access = ws.access()
        for name in (WIRE, DRILL):
            ws.create_tenant(name)
            for purpose, roles in (("app", ["reader", "contributor"]), ("trainer", ["trainer"])):
                grant = access.grant(
                    tenant=name, roles=roles, duration=timedelta(hours=8), reason="demo days"
                )
                tokens[(name, purpose)] = grant.token
    return tokens


def run_days(
    path: Path,
    *,
    days: int,
    per_day: int,
    say: Say,
) -> Row:
    """The days after the rounds (see the module); what they showed, for the output and
    the report. The workspace's own server must be stopped: this one serves it."""
    data = streams()
    api_tokens = _tenants_and_tokens(path)
    configure_canary(path)
    start = (SYSTEM.now() + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = ManualClock(start)
    server = InProcessServer(path, clock)
    api = ApiClient(url=server.url, tokens=dict(api_tokens))
    result: Row = {"start": stamp(start), "days": [], "timeline": [], "tenants": [WIRE, DRILL]}
    try:
        with Workspace.open(path, actor="demo") as ws:
            mark = last_seq(ws)
            first = _first_versions(api, ws, data, say)
            api.schedule(WIRE, triggers=TRIGGERS)
            say(
                f"days: the service on a manual clock from {stamp(start)}; "
                f"{escape('[rollout]')} mode = canary; triggers {', '.join(TRIGGERS)} for "
                f"{WIRE} (the drill's round is started by hand); defaults otherwise"
            )
            for day in range(1, days + 1):
                if day == DRILL_DAY:
                    result["drill"] = _drill(api, ws, data, first[DRILL], say)
                result["days"].append(_one_day(api, server, data, day, per_day, say))
                events = collect_events(ws, [WIRE, DRILL], mark, day, stamp(clock.now()))
                mark = last_seq(ws)
                result["timeline"] += events
                for line in _day_lines(day, events):
                    say(line)
            ws.audit.checkpoint()
            result["audit"] = ws.audit.verify().to_dict()
    finally:
        api.http.close()
        server.stop()
    result["outcomes"] = outcomes(result["timeline"])
    return result


def _one_day(
    api: ApiClient, server: InProcessServer, data: dict[str, Any], day: int, per_day: int, say: Say
) -> Row:
    """A day in ``PARTS`` parts: each part's traffic for every tenant at once, then the
    clock moves on, the scheduler and the rollouts tick, the rounds they started finish,
    and they tick again (to settle those rounds' outcomes)."""
    canaries = {name: canary_versions(api, name) for name in (WIRE, DRILL)}
    traffic = _traffic_for(data, day, per_day, drill_on=day == 1 or bool(canaries[DRILL]))
    served: dict[str, list[Row]] = {name: [] for name in traffic}
    for part in range(PARTS):
        canaries = {name: canary_versions(api, name) for name in traffic}
        with ThreadPoolExecutor(max_workers=len(traffic)) as pool:
            futures = [
                pool.submit(serve_part, api, name, rows[part::PARTS], (day, part), canaries[name])
                for name, rows in traffic.items()
            ]
            for future in futures:
                got = future.result()
                served[got["tenant"]].append(got)
        server.settle()
        server.clock.advance(timedelta(days=1) / PARTS)
        ticked = server.running.tick()
        _wait_for_rounds(api, ticked["schedule"])
        if any(d.decision == "trigger" for d in ticked["schedule"]):
            server.running.tick()  # settle the rounds that ended: their outcome, any back-off
    merged = [_merge(name, day, parts) for name, parts in served.items()]
    for s in merged:
        shown = ", ".join(
            f"v{v} {c['served']} served ({c['accuracy']:.0%} right, {c['feedback']} labelled)"
            for v, c in s["versions"].items()
        )
        say(f"day {day} {s['tenant']}: {shown}")
    return {"day": day, "served": merged}


def _merge(tenant: str, day: int, parts: list[Row]) -> Row:
    """A day's tally from its parts'."""
    versions: dict[str, Row] = {}
    for part in parts:
        for v, c in part["versions"].items():
            into = versions.setdefault(v, {"served": 0, "right": 0, "feedback": 0})
            into["served"] += c["served"]
            into["right"] += round(c["accuracy"] * c["served"])
            into["feedback"] += c["feedback"]
    for c in versions.values():
        c["accuracy"] = round(c.pop("right") / c["served"], 4)
    return {
        "tenant": tenant,
        "day": day,
        "served": sum(p["served"] for p in parts),
        "feedback": sum(p["feedback"] for p in parts),
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
    }


def _day_lines(day: int, events: list[Row]) -> list[str]:
    """A day's timeline for the output: the monitors' confirmed signals counted per tenant
    and kind, then every decision (a trigger held back again is not repeated)."""
    lines = []
    signals: dict[str, dict[str, int]] = {}
    for e in events:
        if e["action"] == "monitor.signal":
            kind = str(e["details"].get("kind"))
            per = signals.setdefault(e["tenant"], {})
            per[kind] = per.get(kind, 0) + 1
    for tenant, kinds in sorted(signals.items()):
        shown = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        lines.append(f"  day {day} {tenant}: confirmed signals {shown}")
    for e in events:
        if e["action"] not in ("monitor.signal", "schedule.skip") or (
            e["action"] == "schedule.skip" and e["details"].get("reason") == "rollout"
        ):
            lines.append(f"  day {day} {e['tenant']}: {e['summary']}")
    return lines


def outcomes(timeline: list[Row]) -> Row:
    """What the days showed: triggers that started rounds, automatic promotions and
    rollbacks per tenant."""

    def count(action: str, tenant: str) -> int:
        return sum(1 for e in timeline if e["action"] == action and e["tenant"] == tenant)

    return {
        name: {
            "signals": count("monitor.signal", name),
            "triggers": count("schedule.trigger", name),
            "rollouts": count("rollout.start", name),
            "promoted": count("rollout.promote", name),
            "rolled_back": count("rollout.rollback", name),
        }
        for name in (WIRE, DRILL)
    }
