"""The README's tour of the CLI, run as written, each command in human output and with
``--json`` (issue 14, acceptance 7): every command exits as the README says (0 unless the
tour documents a refusal), never prints a traceback, and with ``--json`` prints JSON (a
refusal: a JSON error on stderr).

The commands are read from the README's ``sh`` block, never listed here, so a command added
to the tour is run by a test and fails it when it cannot run. The tour is cut into
``PARTS`` (where each starts), one test file each in tests/tour/, so that they run in
parallel: each part's workspace is first given the state the part needs (``PREPARE``), built
in-process (``Workspace``, real training rounds), then the part's commands run in order on
it. What the tour leaves to the reader is filled in by the small tables below:

- Placeholders. Tenant ``acme`` and the files ``records.jsonl``, ``suite.jsonl``,
  ``spring.jsonl``, ``gold.jsonl``, ``texts.txt`` become real tenants and files of BBC
  articles (``silolearn.datasets``). Version numbers become the version the command is about
  in the workspace at that moment: ``adapters show`` the serving one, ``adapters promote``
  the candidate, ``adapters rollback --to`` the one retired last.
- Two variants in one workspace. A command that names ``acme`` runs in human form on
  ``acme`` and with ``--json`` on its twin ``acme-json``, which goes through the same tour,
  so that each variant meets the state the tour has built (``tenant create``, ``promote``,
  ``tenant delete --shred``… each happen once per tenant). Workspace-wide commands run in
  both forms in the same workspace, one after the other; ``init`` creates the tour's
  workspace in human form and a fresh one with ``--json``, ``init --sealed`` a fresh one in
  both forms, and a workspace-wide eval set registered with ``--name N`` is named
  ``N-json`` in its JSON form (the name is unique in a workspace).
- Arrivals (``SETUP``). A round learns only from records new since the serving version, so
  before every command that trains, each tenant it trains receives a fresh batch, as in
  production. ``adapters promote`` needs a candidate, which a round leaves only when its
  coordinator dies between registering the candidate and the gates' decision: the setup
  starts a real round and kills it at that moment. ``gates shadow newsroom --run`` needs
  ``newsroom``, a tenant that joined the shared layer and trained a round on it.

Slow parts: every round spawns real training and gate workers. Rounds take 15-60 s each
(LoRA and ``train --all`` the longest) and ``predict`` about 8 s (it loads the encoder);
the whole tour, run as one, took 6 to 13 minutes on two cores shared with other jobs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers import run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import Row, bbc_news
from silolearn.learning.shared import SharedStore
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.shared import SharedTrainer
from silolearn.storage.scope import Purpose

README = Path(__file__).resolve().parents[1] / "README.md"
TOUR_HEADING = "## A tour of the CLI"

TENANT = "acme"
"""The tour's tenant; its ``--json`` variant runs on ``acme-json``."""
FILES = ("records.jsonl", "suite.jsonl", "spring.jsonl", "gold.jsonl", "texts.txt")
PASSPHRASE = "a passphrase for the sealed keyring of the tour"

EXPECTED_EXIT = {"privacy sweep acme --epsilons 1,2,4,8": 11}
"""Commands the README documents as refused, with their exit code; every other command of
the tour must exit 0, but for those in ``GATED``."""
GATED = {("adapters", "promote"): 5, ("gates", "rerun"): 5}
"""Commands whose outcome the release gates decide ("through the same gates", "rolls back
if it fails"): 0 when the version passes, else this exit code and the verdict."""

TOPICS = ("business", "sports")
FIRST_RECORDS = 150
BATCH = 20
SUITE, SPRING, GOLD, TEXTS = 20, 20, 3, 4


def tour() -> list[list[str]]:
    """The commands of the README's tour, in order, without ``silolearn`` and comments."""
    text = README.read_text(encoding="utf-8")
    _, heading, after = text.partition(f"\n{TOUR_HEADING}\n")
    assert heading, f"README.md has no {TOUR_HEADING!r} section"
    section = re.split(r"\n## ", after, maxsplit=1)[0]
    block = re.search(r"```sh\n(.*?)\n```", section, re.S)
    assert block is not None, f"the {TOUR_HEADING!r} section has no sh block"
    commands = []
    for line in block.group(1).splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "silolearn", line
            commands.append(argv[1:])
    return commands


# -- the workspace, its tenants and their records ----------------------------------------------


@dataclass
class Stream:
    """One tenant's records, arriving in time order."""

    rows: list[Row]
    taken: int = 0

    def take(self, n: int) -> list[Row]:
        batch = self.rows[self.taken : self.taken + n]
        assert len(batch) == n, "the tour ran out of records"
        self.taken += n
        return batch


@dataclass(frozen=True)
class Variant:
    as_json: bool
    tenant: str
    files: dict[str, Path]

    @property
    def name(self) -> str:
        return "json" if self.as_json else "human"


@dataclass
class Tour:
    root: Path
    ws: Path
    streams: dict[str, Stream]
    variants: tuple[Variant, Variant]
    seconds: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def open(self) -> Iterator[Workspace]:
        """The tour's workspace, in this process: setup steps and the lookups that fill in
        placeholders need no command line of their own (each costs a second or two)."""
        with Workspace.open(self.ws, actor="tour") as ws:
            yield ws

    def arrive(self, tenant: str) -> None:
        """A fresh batch for ``tenant``, and more until one of them brought an eval record:
        a round's window ends at the newest eval record."""
        tries = 4
        with self.open() as ws:
            for _ in range(tries):
                if ws.tenant(tenant).ingest(self.streams[tenant].take(BATCH)).eval > 0:
                    return
        raise AssertionError(f"{tries} batches of {tenant} brought no eval record")


def _bbc_streams() -> tuple[dict[str, Stream], Stream]:
    """Disjoint, interleaved slices of BBC articles, so each tenant sees every topic and
    its records keep their time order.

    Each record is the article's headline and lead paragraph: short texts keep the LoRA
    round, which back-propagates through the encoder, and the gates on its candidate within
    a minute or two. Two topics that rarely share words (business and sport) let later
    rounds be promoted: the quality gate promotes a candidate shown not to be worse on a
    few dozen eval records, which a candidate that errs on one more of them is not, so a
    tour on harder data meets rejected rounds where the README expects versions to promote
    and roll back to."""
    rows = [
        {**r, "text": _headline_and_lead(r["text"])} for r in bbc_news() if r["label"] in TOPICS
    ]
    # the articles arrive topic by topic in turn: slices of an odd period get both topics
    slices = {TENANT: (0, 1, 2), f"{TENANT}-json": (3, 4, 5), "newsroom": (6, 7), "": (8,)}
    streams = {
        name: Stream([r for i, r in enumerate(rows) if i % 9 in at]) for name, at in slices.items()
    }
    return streams, streams.pop("")


def _headline_and_lead(text: str) -> str:
    return "\n\n".join([p.strip() for p in text.split("\n") if p.strip()][:2])


def new_tour(root: Path) -> Tour:
    """A tour in ``root``: its files written, its workspace not yet created."""
    streams, extra = _bbc_streams()
    variants = []
    for as_json, tenant in ((False, TENANT), (True, f"{TENANT}-json")):
        files = {
            "records.jsonl": write_jsonl(
                root / f"{tenant}-records.jsonl", streams[tenant].take(FIRST_RECORDS)
            ),
            "suite.jsonl": write_jsonl(root / f"{tenant}-suite.jsonl", extra.take(SUITE)),
            "spring.jsonl": write_jsonl(root / f"{tenant}-spring.jsonl", extra.take(SPRING)),
            "gold.jsonl": write_jsonl(root / f"{tenant}-gold.jsonl", extra.take(GOLD)),
        }
        texts = root / f"{tenant}-texts.txt"
        texts.write_text(
            "".join(r["text"].split("\n")[0] + "\n" for r in extra.take(TEXTS)), encoding="utf-8"
        )
        files["texts.txt"] = texts
        variants.append(Variant(as_json, tenant, files))
    return Tour(root, root / "ws", streams, (variants[0], variants[1]))


# -- per-command setup and substitutions ----------------------------------------------------


def _tenants_trained(tour_: Tour, argv: list[str], variant: Variant) -> list[str]:
    if "--all" in argv:
        with tour_.open() as ws:
            return [t.name for t in ws.tenants.list() if t.status == "active"]
    return [variant.tenant]


def _before_train(tour_: Tour, argv: list[str], variant: Variant) -> None:
    for tenant in _tenants_trained(tour_, argv, variant):
        tour_.arrive(tenant)


def _before_promote(tour_: Tour, argv: list[str], variant: Variant) -> None:
    """A real round of the tenant whose coordinator is killed once its candidate is
    registered, before the gates decide: the candidate stays one (a crash the registry
    keeps, and ``adapters promote`` is for)."""
    tour_.arrive(variant.tenant)
    before = _candidates(tour_.ws, variant.tenant)
    round_ = subprocess.Popen(
        [sys.executable, "-m", "silolearn.cli", "train", variant.tenant],
        env={**os.environ, "SILOLEARN_WORKSPACE": str(tour_.ws)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while _candidates(tour_.ws, variant.tenant) == before and round_.poll() is None:
            time.sleep(0.01)
    finally:
        # the round's workers are in its process group
        if round_.poll() is None:
            os.killpg(round_.pid, signal.SIGKILL)
        round_.wait()
    assert _candidates(tour_.ws, variant.tenant) != before, "the round ended before its kill"


def _candidates(ws: Path, tenant: str) -> list[int]:
    with sqlite3.connect(f"file:{ws / 'silolearn.db'}?mode=ro", uri=True) as conn:
        return [
            version
            for (version,) in conn.execute(
                "SELECT v.version FROM adapter_versions v JOIN tenants t ON t.id = v.tenant_id "
                "WHERE t.name = ? AND v.status = 'candidate'",
                (tenant,),
            )
        ]


def _shared_member_with_a_round(tour_: Tour, argv: list[str], variant: Variant) -> None:
    """``gates shadow T --run`` compares T's serving version, trained on the shared layer,
    with an isolated shadow: T joins the layer and trains one round on it."""
    tenant = argv[2]
    with tour_.open() as ws:
        if any(t.name == tenant for t in ws.tenants.list()):
            return
    # the shadow comparison is what this command shows, not the first version's quality:
    # ~15 eval records cannot always show it beats the constant answer
    with (tour_.ws / "silolearn.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[gates.tenants."{tenant}"]\nquality = false\n')
    with tour_.open() as ws:
        ws.create_tenant(tenant)
        ws.tenant(tenant).ingest(tour_.streams[tenant].take(FIRST_RECORDS))
        SharedStore(ws).join(tenant)
        trained = ws.tenant(tenant).train()
    assert trained.status == "active", trained.decision


SETUP: dict[tuple[str, ...], Callable[[Tour, list[str], Variant], None]] = {
    ("train",): _before_train,
    ("adapters", "promote"): _before_promote,
    ("gates", "shadow"): _shared_member_with_a_round,
}
"""Run before each variant of a command that starts with the key."""


def _versions(tour_: Tour, tenant: str) -> list[AdapterVersion]:
    with tour_.open() as ws:
        return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).list()


def _serving(tour_: Tour, tenant: str) -> int:
    active = [v.version for v in _versions(tour_, tenant) if v.status == "active"]
    assert len(active) == 1, f"{tenant} serves {len(active)} versions"
    return active[0]


def _candidate(tour_: Tour, tenant: str) -> int:
    """The newest candidate: the one the setup's killed round left."""
    return max(_candidates(tour_.ws, tenant))


def _retired_last(tour_: Tour, tenant: str) -> int:
    retired = [v for v in _versions(tour_, tenant) if v.status == "retired"]
    assert retired, f"{tenant} has no retired version to roll back to"
    return max(retired, key=lambda v: v.updated_at).version


VERSIONS: dict[tuple[str, ...], tuple[str | int, Callable[[Tour, str], int]]] = {
    ("adapters", "show"): (3, _serving),
    ("adapters", "promote"): (3, _candidate),
    ("adapters", "rollback"): ("--to", _retired_last),
}
"""Where a command names a version (a position, or the option before it) and which version
of the variant's tenant it means."""


def matches(argv: list[str], key: tuple[str, ...]) -> bool:
    return tuple(argv[: len(key)]) == key


def _concrete(tour_: Tour, argv: list[str], variant: Variant) -> list[str]:
    """The README's command with its placeholders filled in for ``variant``."""
    args = [a for a in argv if a != "--json"]
    for i, arg in enumerate(args):
        if arg == TENANT:
            args[i] = variant.tenant
        elif arg in FILES:
            args[i] = str(variant.files[arg])
        elif re.fullmatch(r"[\w.-]+\.(jsonl|csv|txt)", arg):
            raise AssertionError(f"no file for the README's placeholder {arg!r}")
        elif variant.as_json and i > 0 and args[i - 1] == "--name" and "--tenant" not in args:
            args[i] = f"{arg}-json"
    for key, (where, which) in VERSIONS.items():
        if matches(args, key):
            at = where if isinstance(where, int) else args.index(where) + 1
            args[at] = str(which(tour_, variant.tenant))
    return args + (["--json"] if variant.as_json else [])


def _workspace_and_env(
    tour_: Tour, argv: list[str], variant: Variant
) -> tuple[Path, dict[str, str]]:
    if argv[0] != "init":
        return tour_.ws, {}
    if "--sealed" in argv:
        return tour_.root / f"sealed-{variant.name}", {"SILOLEARN_PASSPHRASE": PASSPHRASE}
    return (tour_.root / "init-json" if variant.as_json else tour_.ws), {}


# -- the tour ------------------------------------------------------------------------------


def _judge(
    argv: list[str], variant: Variant, done: subprocess.CompletedProcess[str]
) -> Iterator[str]:
    expected = {EXPECTED_EXIT.get(shlex.join(argv), 0)}
    expected |= {code for key, code in GATED.items() if matches(argv, key)}
    if done.returncode not in expected:
        yield f"exit {done.returncode}, the README says {' or '.join(map(str, sorted(expected)))}"
    for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
        if "Traceback" in text:
            yield f"a traceback on {stream}"
    answered = done.returncode == 0 or bool(done.stdout.strip())
    if variant.as_json:
        # a refusal's JSON is the last line on stderr, after any warning logged before it
        payload = done.stdout if answered else done.stderr.strip().split("\n")[-1]
        try:
            json.loads(payload)
        except json.JSONDecodeError:
            yield f"--json printed no JSON on {'stdout' if answered else 'stderr'}"
    elif not answered:
        if "error (" not in done.stderr:
            yield "no typed error on stderr"
    elif not done.stdout.strip():
        yield "no output"


# -- the parts of the tour, and the state each one starts from -------------------------------


def _tenants_with_records(tour_: Tour) -> None:
    """What the tour's first commands build: the workspace, both tenants (with the
    README's ``--pii-policy tokenize``) and their ``records.jsonl``."""
    with Workspace.init(tour_.ws, actor="tour") as ws:
        for variant in tour_.variants:
            ws.create_tenant(variant.tenant, pii_policy="tokenize")
            ws.tenant(variant.tenant).ingest(variant.files["records.jsonl"])


def _train_until(tour_: Tour, tenant: str, statuses: set[str], rounds: int = 4) -> None:
    """Rounds of ``tenant``, each on a fresh batch, until it has versions of each of
    ``statuses``; a round the gates reject is followed by another, as in production."""
    for _ in range(rounds):
        if statuses <= {v.status for v in _versions(tour_, tenant)}:
            return
        tour_.arrive(tenant)
        with tour_.open() as ws:
            ws.tenant(tenant).train()
    assert statuses <= {v.status for v in _versions(tour_, tenant)}, (
        f"{rounds} rounds of {tenant} left no version of each of {sorted(statuses)}"
    )


def _nothing(tour_: Tour) -> None:
    """``init`` is the part's first command."""


def _trained_versions(tour_: Tour) -> None:
    """Each tenant serves a version and has retired an earlier one (the tour's rounds have
    left several), to show, promote over and roll back to."""
    _tenants_with_records(tour_)
    for variant in tour_.variants:
        _train_until(tour_, variant.tenant, {"active", "retired"})


def _serving_and_a_shared_layer(tour_: Tour) -> None:
    """Each tenant serves a version and is a member of a trained shared layer (the README's
    ``shared join`` and ``shared train --epsilon 2``), which ``newsroom`` joins."""
    _tenants_with_records(tour_)
    for variant in tour_.variants:
        _train_until(tour_, variant.tenant, {"active"})
    with tour_.open() as ws:
        for variant in tour_.variants:
            SharedStore(ws).join(variant.tenant)
        SharedTrainer(ws).train(epsilon=2.0)


PARTS: dict[str, tuple[str, Callable[[Tour], None]]] = {
    "workspace": ("init", _nothing),
    "rounds": ("train acme --json", _tenants_with_records),
    "versions": ("schedule set acme", _trained_versions),
    "privacy": ("privacy budget acme", _tenants_with_records),
    "gates": ("eval register gold.jsonl", _serving_and_a_shared_layer),
}
"""Each part of the tour (tests/tour/test_<part>.py): the command it starts with (it ends
where the next part starts) and the state it starts from."""


def part(name: str) -> list[list[str]]:
    """The commands of the part ``name``, in the README's order."""
    commands = tour()
    starts = []
    for first, _ in PARTS.values():
        at = next(
            (i for i, argv in enumerate(commands) if shlex.join(argv).startswith(first)), None
        )
        assert at is not None, f"no command {first!r} in the tour to start a part with"
        starts.append(at)
    assert starts[0] == 0 and starts == sorted(set(starts)), f"the parts start at {starts}"
    index = list(PARTS).index(name)
    ends = [*starts[1:], len(commands)]
    return commands[starts[index] : ends[index]]


def prepare(tour_: Tour, name: str) -> Tour:
    """The state the part ``name`` starts from, in ``tour_``'s workspace."""
    PARTS[name][1](tour_)
    return tour_


def run_part(tour_: Tour, name: str) -> None:
    """Every command of the part in both variants; a failed command does not stop the part,
    and the assertion lists everything that went wrong."""
    problems = []
    for argv in part(name):
        for variant in tour_.variants:
            try:
                for key, setup in SETUP.items():
                    if matches(argv, key):
                        setup(tour_, argv, variant)
                args = _concrete(tour_, argv, variant)
            except AssertionError as exc:
                problems.append(f"silolearn {shlex.join(argv)} ({variant.name}): not run: {exc}")
                continue
            path, env = _workspace_and_env(tour_, argv, variant)
            started = time.perf_counter()
            done = run_cli(*args, "--workspace", str(path), env=env)
            tour_.seconds.append((shlex.join(args), time.perf_counter() - started))
            print(f"{tour_.seconds[-1][1]:7.1f} s  exit {done.returncode}  {shlex.join(args)}")
            for problem in _judge(argv, variant, done):
                problems.append(
                    f"silolearn {shlex.join(argv)} ({variant.name}, run as "
                    f"{shlex.join(args)}): {problem}\n  stdout: {done.stdout[-600:]!r}\n"
                    f"  stderr: {done.stderr[-1200:]!r}"
                )
    slowest = sorted(tour_.seconds, key=lambda s: -s[1])[:8]
    print("slowest commands:", *(f"{s:7.1f} s  {c}" for c, s in slowest), sep="\n")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)
