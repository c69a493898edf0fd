"""Reading a saga store for an operator: what each unfinished saga waits on, whether it is stuck,
and whether the sagas in flight would run under the definitions of the code about to be deployed.

Everything here only reads the store (SQLite or PostgreSQL, opened read-only is enough) and needs
no running understudy. The answers are frozen attrs values, so the command line
(``understudy list``, ``show``, ``check-inflight``), a web page or a script can all use them:

- :func:`waiting_on` says what one unfinished saga waits on (:class:`Diagnosis`): a participant's
  reply (:class:`Reply`), a retry after a backoff (:class:`Backoff`), a definition version that
  the runtime that last looked at it lacks (:class:`MissingDefinition`), or nothing it can act on
  (:class:`Unreadable`); and whether its shard's owner is gone (:class:`Owner`). A saga is
  *stuck* when a reply deadline or a retry time passed more than ``margin`` seconds ago, its
  owner is gone, its definition is missing, or its row cannot be read.
  :func:`diagnose` does it for many sagas, :func:`find_stuck` for every unfinished saga.
- :func:`restarts` counts a saga's restarts from its timeline: every ``claimed`` event is a new
  incarnation resumed from the saga's snapshot, whether its host restarted it, a new host took
  over its shard, or a new runtime resumed it after the whole application died.
- :func:`check_inflight` loads every in-flight saga (running or compensating: a parked saga is
  failed, not in flight) against a list of definitions, as recovery would (matched by name and
  version only: nothing compares code), and says which would not run, which would park and which
  would be reinterpreted (the definition with its name and version exists, but its steps differ
  from those its timeline recorded). :func:`load_definitions` imports such a list by
  ``module:attribute``.

The ``describe_*`` functions give the one-line texts the command prints.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from understudy import codec
from understudy.actors import machines
from understudy.actors.saga import DO
from understudy.definitions import CHILDREN, SagaDefinition, child_ref
from understudy.errors import CorruptRecord
from understudy.persistence.base import ACTIVE_STATUSES, EventRecord, Lease, SagaRecord, SagaStore
from understudy.supervisors.leases import holder_state
from understudy.supervisors.recovery import shard_of

#: Seconds a reply deadline or a retry time may be past before a saga counts as stuck: a busy
#: saga host fires its timers a little late, and that is not stuck.
DEFAULT_MARGIN: Final = 10.0

#: Owner states in which nobody works the saga's shard (see :class:`Owner`).
GONE_STATES: Final = frozenset({"dead", "orphan", "free", "expired", "none"})

_INTENTS: Final = frozenset({"intent", "compensation-intent"})


# --- what a saga waits on --------------------------------------------------------------------


@attrs.frozen
class Reply:
    """A request is out: the saga waits on ``participant``'s reply to ``action``.

    ``kind`` is ``"do"`` (the step) or ``"undo"`` (its compensation). ``sent_at`` is when the
    request was last sent (a restart sends it again, same key), ``first_sent_at`` when this
    attempt was first sent; both None when the timeline does not say. ``deadline`` is when the
    saga stops waiting and counts the attempt as failed.
    """

    kind: str
    step: int
    step_name: str | None
    participant: str | None
    action: str | None
    attempt: int
    sent_at: float | None
    first_sent_at: float | None
    deadline: float
    what: str = attrs.field(default="reply", init=False)


@attrs.frozen
class Backoff:
    """An attempt failed and the next one (``attempt``) is due at ``due``.

    ``failed_at`` and ``failure`` tell what happened to the attempt before (None when the
    timeline does not say).
    """

    kind: str
    step: int
    step_name: str | None
    participant: str | None
    action: str | None
    attempt: int
    due: float
    failed_at: float | None
    failure: str | None
    what: str = attrs.field(default="retry", init=False)


@attrs.frozen
class MissingDefinition:
    """A runtime that lacks the saga's definition version found it and left it untouched
    (recovery's ``suspended`` event, I15). ``registered`` is what that runtime had, ``pid`` its
    process, ``since`` the first and ``last_at`` the latest such event in a row. ``then`` is what
    the saga waited on when it stopped, and will wait on again once it runs."""

    definition: str
    version: int
    registered: tuple[str, ...]
    pid: int | None
    since: float
    last_at: float
    then: Reply | Backoff | None
    what: str = attrs.field(default="definition", init=False)


@attrs.frozen
class Paused:
    """An operator paused the saga (``who``, ``why``, ``since``): it sends nothing new until
    resumed. ``held`` is the send held back, as ``(kind, step, step name, attempt)``, or None
    while the saga still waits on ``then`` (a reply to a request already out, or a retry due,
    which is held when it comes due)."""

    who: str
    why: str
    since: float
    held: tuple[str, int, str | None, int] | None
    then: Reply | Backoff | None
    what: str = attrs.field(default="paused", init=False)


@attrs.frozen
class Unreadable:
    """The saga's row or snapshot cannot be read (``reason``): understudy acts on nothing of it
    and parks it as failed when it loads it."""

    reason: str
    what: str = attrs.field(default="unreadable", init=False)


@attrs.frozen
class Idle:
    """Neither a request out nor a retry due is recorded (a saga whose first snapshot is not
    written yet); ``since`` is the row's last change."""

    since: float
    what: str = attrs.field(default="nothing", init=False)


Wait = Reply | Backoff | MissingDefinition | Paused | Unreadable | Idle


@attrs.frozen
class Owner:
    """Who works the saga's shard, from the shard's lease.

    ``state``: ``"live"`` (its process runs on this machine), ``"remote"`` (another machine: only
    the lease can tell, and it runs), ``"orphan"`` (its process runs, its application's does
    not: it lets go within its watch interval), ``"dead"`` (its process on this machine has
    exited), ``"free"`` (nobody holds the shard: understudy was stopped), ``"expired"`` (the
    lease ran out unrenewed), ``"none"`` (the store has no shards: no runtime ever started on
    it). ``expires_at`` is in the store's clock, as is ``checked_at``, when this was read.
    """

    shard: int | None
    state: str
    holder: str
    pid: int | None
    node: str | None
    app_pid: int | None
    expires_at: float | None
    checked_at: float

    @property
    def gone(self) -> bool:
        """Whether nobody works the shard: the saga moves only once understudy starts again."""
        return self.state in GONE_STATES


@attrs.frozen
class Diagnosis:
    """What one unfinished saga waits on, who works it, and why it is stuck (``stuck``, short
    reasons; empty when it is not). ``now`` is the wall-clock time deadlines were compared
    with, ``margin`` how far past them a saga may be before it is stuck."""

    saga_id: str
    status: str
    definition: str
    version: int
    incarnation: int
    created_at: float
    updated_at: float
    wait: Wait
    owner: Owner
    stuck: tuple[str, ...]
    now: float
    margin: float

    @property
    def is_stuck(self) -> bool:
        return bool(self.stuck)


@attrs.frozen
class Shards:
    """Every shard's lease, as the store's :meth:`~SagaStore.leases` returned them, and the
    store's clock when they were read."""

    leases: tuple[Lease, ...]
    read_at: float


def read_shards(store: SagaStore) -> Shards:
    return Shards(tuple(store.leases()), store.now())


def owner_of(saga_id: str, shards: Shards) -> Owner:
    """The owner of ``saga_id``'s shard."""
    store_now = shards.read_at
    if not shards.leases:
        return Owner(None, "none", "", None, None, None, None, store_now)
    shard = shard_of(saga_id, len(shards.leases))
    lease = next((lease for lease in shards.leases if lease.shard == shard), None)
    if lease is None:
        return Owner(shard, "none", "", None, None, None, None, store_now)
    about = lease.about
    pid = about.get("pid") if isinstance(about.get("pid"), int) else None
    app_pid = about.get("app_pid") if isinstance(about.get("app_pid"), int) else None
    node = about.get("node") if isinstance(about.get("node"), str) else None
    state = holder_state(lease)
    if state not in ("free", "dead") and lease.expires_at <= store_now:
        state = "expired"
    return Owner(shard, state, lease.holder, pid, node, app_pid, lease.expires_at, store_now)


def waiting_on(
    store: SagaStore,
    record: SagaRecord,
    *,
    now: float | None = None,
    margin: float = DEFAULT_MARGIN,
    shards: Shards | None = None,
    events: Sequence[EventRecord] | None = None,
) -> Diagnosis:
    """What the unfinished saga ``record`` waits on, read from ``store``.

    ``now`` (default: this machine's clock) is compared with the deadlines and retry times the
    saga hosts wrote in their own clocks; the lease expiry is compared with the store's clock.
    ``shards`` (:func:`read_shards`) and ``events`` may be passed when already read
    (:func:`diagnose` reads the leases once for many sagas). Raises ValueError for a saga that
    has ended.
    """
    if record.terminal:
        raise ValueError(
            f"saga {record.saga_id!r} is {record.status}: it waits on nothing "
            "(understudy show prints how it ended)"
        )
    now = time.time() if now is None else now
    if shards is None:
        shards = read_shards(store)
    if events is None:
        events = store.events(record.saga_id)
    wait = _wait(record, events)
    owner = owner_of(record.saga_id, shards)
    return Diagnosis(
        record.saga_id,
        record.status,
        record.definition,
        record.version,
        record.incarnation,
        record.created_at,
        record.updated_at,
        wait,
        owner,
        _stuck(wait, owner, now, margin),
        now,
        margin,
    )


def diagnose(
    store: SagaStore,
    records: Iterable[SagaRecord],
    *,
    now: float | None = None,
    margin: float = DEFAULT_MARGIN,
) -> list[Diagnosis]:
    """:func:`waiting_on` for every unfinished saga among ``records`` (ended ones are left
    out), in their order; the leases are read once."""
    now = time.time() if now is None else now
    shards = read_shards(store)
    return [
        waiting_on(store, record, now=now, margin=margin, shards=shards)
        for record in records
        if not record.terminal
    ]


def find_stuck(
    store: SagaStore, *, now: float | None = None, margin: float = DEFAULT_MARGIN
) -> list[Diagnosis]:
    """Every unfinished saga of the store that is stuck, newest first. Reads every unfinished
    saga's row and timeline."""
    records = store.get_many(store.unfinished())
    ordered = sorted(records.values(), key=lambda r: (r.created_at, r.saga_id), reverse=True)
    return [d for d in diagnose(store, ordered, now=now, margin=margin) if d.is_stuck]


def _wait(record: SagaRecord, events: Sequence[EventRecord]) -> Wait:
    intact = [e for e in events if e.corrupt is None]
    state, problem = snapshot_state(record)
    if state is not None and isinstance(state.get("track"), list):
        state = _workflow_wait(state)
    then: Reply | Backoff | None = None
    if state is not None:
        found = _reply_or_backoff(state, intact)
        if isinstance(found, str):
            problem = found
        else:
            then = found
    suspended = _trailing_suspensions(intact)
    if suspended:
        first, last = suspended[0], suspended[-1]
        registered = last.detail.get("registered")
        pid = last.detail.get("pid")
        return MissingDefinition(
            str(last.detail.get("definition", record.definition)),
            _int(last.detail.get("version"), record.version),
            tuple(str(r) for r in registered) if isinstance(registered, list) else (),
            pid if isinstance(pid, int) else None,
            first.at,
            last.at,
            then,
        )
    if problem is not None:
        return Unreadable(problem)
    paused = _paused(state, intact, then) if state is not None else None
    if paused is not None:
        return paused
    return then if then is not None else Idle(record.updated_at)


def _paused(
    state: dict[str, Any], events: Sequence[EventRecord], then: Reply | Backoff | None
) -> Paused | None:
    """The operator's pause ``state`` records (snapshots written before pauses existed have
    none), with the send it holds back."""
    paused, held = state.get("paused"), state.get("held")
    if not isinstance(paused, list) or len(paused) != 3:
        return None
    who, why, since = paused
    hold: tuple[str, int, str | None, int] | None = None
    if isinstance(held, list) and len(held) == 3:
        kind, step, attempt = held
        names = [e.detail.get("name") for e in events if e.step == step and "name" in e.detail]
        hold = (str(kind), _int(step, 0), _text(names[-1]) if names else None, _int(attempt, 1))
    return Paused(str(who), str(why), float(since), hold, then)


def _workflow_wait(state: dict[str, Any]) -> dict[str, Any]:
    """A workflow's state seen as a saga's: of the requests it waits on at once, the one whose
    deadline comes first (else the retry due first, else the first send held back)."""
    out, due, held = [], [], []
    for step, entry in enumerate(state["track"]):
        if not isinstance(entry, list) or len(entry) != 5:
            continue
        status, kind, attempt, at, _token = entry
        if status in ("out", "due") and not isinstance(at, int | float):
            continue  # malformed: the restore that runs it parks it, saying why
        if status == "out":
            out.append([kind, step, attempt, at])
        elif status == "due":
            due.append([kind, step, attempt, at])
        elif status == "held":
            held.append([kind, step, attempt])
    view = dict(state)
    view["pending"] = min(out, key=lambda w: w[3]) if out else None
    view["waiting"] = min(due, key=lambda w: w[3]) if due and not out else None
    view["held"] = held[0] if held else None
    return view


def snapshot_state(record: SagaRecord) -> tuple[dict[str, Any] | None, str | None]:
    """The decoded snapshot, or why it cannot be read (None, None: no snapshot yet)."""
    if record.corrupt is not None:
        return None, record.corrupt
    if record.snapshot is None:
        return None, None
    what = f"snapshot v{record.snapshot_version} of saga {record.saga_id!r}"
    try:
        data = codec.decode(record.snapshot, what)
    except CorruptRecord as exc:
        return None, str(exc)
    if not isinstance(data, dict):
        return None, f"{what} is a {type(data).__name__}, not a saga state"
    return data, None


def _reply_or_backoff(
    state: dict[str, Any], events: Sequence[EventRecord]
) -> Reply | Backoff | str | None:
    """The request out or the retry due that ``state`` records; a text when it is malformed."""
    for field in ("pending", "waiting"):
        entry = state.get(field)
        if entry is None:
            continue
        if (
            not isinstance(entry, list)
            or len(entry) != 4
            or entry[0] not in (DO, "undo")
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry[1:3])
            or not isinstance(entry[3], int | float)
        ):
            return f"the snapshot's {field} entry {str(entry)[:40]} is malformed"
        kind, step, attempt, at = entry
        intent_kind = "intent" if kind == DO else "compensation-intent"
        named = [e for e in events if e.kind in _INTENTS and e.step == step]
        latest = named[-1].detail if named else {}
        name = latest.get("name")
        participant = latest.get("participant")
        action = next(
            (
                e.detail.get("action")
                for e in reversed(named)
                if e.kind == intent_kind and "action" in e.detail
            ),
            None,
        )
        if field == "pending":
            sends = [e.at for e in named if e.kind == intent_kind and e.attempt == attempt]
            return Reply(
                kind,
                step,
                _text(name),
                _text(participant),
                _text(action),
                attempt,
                sends[-1] if sends else None,
                sends[0] if sends else None,
                float(at),
            )
        failed_at, failure = _last_failure(events, step, attempt - 1)
        return Backoff(
            kind,
            step,
            _text(name),
            _text(participant),
            _text(action),
            attempt,
            float(at),
            failed_at,
            failure,
        )
    return None


def _last_failure(
    events: Sequence[EventRecord], step: int, attempt: int
) -> tuple[float | None, str | None]:
    for e in reversed(events):
        if e.step != step or e.attempt != attempt:
            continue
        if e.kind == "timeout":
            return e.at, f"no reply within {e.detail.get('after')} s"
        if e.kind == "failed":
            return e.at, str(e.detail.get("reason") or e.detail.get("outcome") or "failed")
    return None, None


def _trailing_suspensions(events: Sequence[EventRecord]) -> list[EventRecord]:
    """The ``suspended`` events at the end of the timeline: nothing ran the saga since."""
    run: list[EventRecord] = []
    for e in reversed(events):
        if e.kind != "suspended":
            break
        run.append(e)
    return run[::-1]


def _stuck(wait: Wait, owner: Owner, now: float, margin: float) -> tuple[str, ...]:
    reasons: list[str] = []
    if isinstance(wait, MissingDefinition):
        reasons.append(f"definition {wait.definition} v{wait.version} missing")
    elif isinstance(wait, Unreadable):
        reasons.append("unreadable")
    elif isinstance(wait, Reply) and now > wait.deadline + margin:
        reasons.append(f"no reply {span(now - wait.deadline)} past its deadline")
    elif isinstance(wait, Backoff) and now > wait.due + margin:
        reasons.append(f"retry {span(now - wait.due)} overdue")
    elif isinstance(wait, Idle) and now > wait.since + margin:
        reasons.append(f"nothing recorded for {span(now - wait.since)}")
    if owner.gone:
        reasons.append("owner gone")
    return tuple(reasons)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


# --- restarts --------------------------------------------------------------------------------


@attrs.frozen
class Restarts:
    """A saga's restarts, from its timeline: ``count`` ``claimed`` events, each a new
    incarnation resumed from the saga's snapshot (restarted in its host after a crash, taken
    over by a new host, resumed by a new runtime, or claimed to be parked); ``recoveries`` of
    them counted against the persisted recovery cap (its host died while working on it);
    ``last_at`` the latest."""

    count: int
    recoveries: int
    last_at: float | None


def restarts(events: Iterable[EventRecord]) -> Restarts:
    claims = [e for e in events if e.kind == "claimed" and e.corrupt is None]
    return Restarts(
        len(claims),
        sum(1 for e in claims if e.detail.get("recovery") is True),
        claims[-1].at if claims else None,
    )


# --- checking in-flight sagas against new definitions ----------------------------------------


class DefinitionsNotLoaded(ValueError):
    """``module:attribute`` does not name a list of saga definitions; the message says why and
    what to do."""


@attrs.frozen
class Mismatch:
    """A step the saga's timeline recorded (``kind`` ``"do"``: sent as ``recorded``, or
    ``"undo"``: its compensation) that the new definition describes otherwise (``new``; None
    when it has no step at that index). Both read ``name (participant.action)``."""

    step: int
    kind: str
    recorded: str
    new: str | None


RUNNABLE: Final = "runnable"
NOT_RUN: Final = "would not run"
PARKS: Final = "would park"
REINTERPRETED: Final = "would be reinterpreted"


@attrs.frozen
class Verdict:
    """What recovery would do with one in-flight saga under the new definitions: ``outcome``
    is :data:`RUNNABLE`, :data:`NOT_RUN` (its name and version are not among them: it stays
    untouched), :data:`PARKS` (its row or snapshot cannot be restored against the definition:
    it parks as failed) or :data:`REINTERPRETED` (it would run, but its steps differ from what
    it recorded: ``mismatches``). ``reason`` says it in a sentence (None when runnable)."""

    saga_id: str
    status: str
    definition: str
    version: int
    outcome: str
    reason: str | None = None
    mismatches: tuple[Mismatch, ...] = ()


@attrs.frozen
class InflightCheck:
    """Every in-flight saga's :class:`Verdict`, oldest first, and the definitions checked
    against (``"name vN"``)."""

    verdicts: tuple[Verdict, ...]
    definitions: tuple[str, ...]

    @property
    def problems(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if v.outcome != RUNNABLE)

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, outcome: str) -> int:
        return sum(1 for v in self.verdicts if v.outcome == outcome)


def load_definitions(spec: str) -> tuple[SagaDefinition, ...]:
    """The saga definitions ``spec`` (``module:attribute``) names: a list or tuple of
    :class:`SagaDefinition`, or a callable returning one. The module is imported as
    ``python -m`` would (the current directory first on the path). Raises
    :class:`DefinitionsNotLoaded` saying what is wrong and how to fix it."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise DefinitionsNotLoaded(
            f"--definitions must look like module:attribute (for example "
            f"myapp.sagas:DEFINITIONS), got {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise DefinitionsNotLoaded(
                f"cannot import module {module_name!r} (from --definitions {spec}): there is no "
                "such module here; run from the directory that holds it, or add that directory "
                "to PYTHONPATH"
            ) from exc
        raise DefinitionsNotLoaded(
            f"importing module {module_name!r} (from --definitions {spec}) failed: {exc}; "
            "install what it imports, or run where it can be imported"
        ) from exc
    except Exception as exc:
        raise DefinitionsNotLoaded(
            f"importing module {module_name!r} (from --definitions {spec}) raised "
            f"{type(exc).__name__}: {exc}; fix the module so that it imports"
        ) from exc
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            found = _definition_names(module)
            hint = f"; it defines {', '.join(found)}" if found else "; it defines no SagaDefinition"
            raise DefinitionsNotLoaded(
                f"module {module_name!r} has no attribute {attribute!r} (from --definitions "
                f"{spec}){hint}"
            )
        value = getattr(value, part)
    if callable(value) and not isinstance(value, SagaDefinition | list | tuple):
        try:
            value = value()
        except Exception as exc:
            raise DefinitionsNotLoaded(
                f"calling {spec}() raised {type(exc).__name__}: {exc}; --definitions calls a "
                "callable with no arguments and expects a list of SagaDefinition back"
            ) from exc
    if isinstance(value, SagaDefinition):
        raise DefinitionsNotLoaded(
            f"{spec} is one SagaDefinition ({value.name} v{value.version}), not a list of them: "
            "name a list or tuple holding every definition the new code registers"
        )
    if not isinstance(value, list | tuple):
        raise DefinitionsNotLoaded(
            f"{spec} is a {type(value).__name__}, not a list or tuple of SagaDefinition (nor a "
            "callable returning one): name what the new code passes to Understudy.start"
        )
    if not value:
        raise DefinitionsNotLoaded(
            f"{spec} is empty: list every SagaDefinition the new code registers"
        )
    by_key: dict[tuple[str, int], SagaDefinition] = {}
    for index, item in enumerate(value):
        if not isinstance(item, SagaDefinition):
            raise DefinitionsNotLoaded(
                f"item {index} of {spec} is a {type(item).__name__} ({str(item)[:40]!r}), not a "
                "SagaDefinition"
            )
        if by_key.get(item.key, item) != item:
            raise DefinitionsNotLoaded(
                f"{spec} holds two different definitions of {item.name} v{item.version}: a saga "
                "is matched to its definition by name and version, so give each its own version"
            )
        by_key[item.key] = item
    return tuple(by_key.values())


def _definition_names(module: Any) -> list[str]:
    """The module's names that hold definitions, to suggest one."""
    found = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, SagaDefinition):
            found.append(f"{name} (one SagaDefinition)")
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, SagaDefinition) for v in value)
        ):
            found.append(f"{name} (a {type(value).__name__} of {len(value)})")
    return found


def check_inflight(store: SagaStore, definitions: Iterable[SagaDefinition]) -> InflightCheck:
    """Load every in-flight saga of ``store`` against ``definitions`` as recovery would, and
    say what each would do (see :class:`Verdict`). Nothing is written."""
    known = {d.key: d for d in definitions}
    names = tuple(sorted(f"{n} v{v}" for n, v in known))
    ids = store.unfinished()
    records = store.get_many(ids)
    verdicts = []
    for saga_id in ids:
        record = records.get(saga_id)
        if record is None or record.status not in ACTIVE_STATUSES:
            continue  # ended since the list was read
        verdicts.append(
            _verdict(store, record, known.get((record.definition, record.version)), names)
        )
    return InflightCheck(tuple(verdicts), names)


def _verdict(
    store: SagaStore,
    record: SagaRecord,
    definition: SagaDefinition | None,
    names: tuple[str, ...],
) -> Verdict:
    base = (record.saga_id, record.status, record.definition, record.version)
    label = f"{record.definition} v{record.version}"
    if definition is None:
        return Verdict(
            *base,
            NOT_RUN,
            f"{label} is not among the new definitions (they have: {', '.join(names)}); "
            f"recovery would leave it untouched until a runtime with {label} starts",
        )
    try:
        machines.from_record(record, definition)
    except CorruptRecord as exc:
        return Verdict(*base, PARKS, f"{exc}; recovery would park it as failed")
    mismatches = _mismatches(store.events(record.saga_id), definition)
    if mismatches:
        reason = describe_mismatch(mismatches[0], label)
        if len(mismatches) > 1:
            reason += f" (and {len(mismatches) - 1} more)"
        return Verdict(*base, REINTERPRETED, reason, mismatches)
    return Verdict(*base, RUNNABLE)


def _mismatches(events: Sequence[EventRecord], definition: SagaDefinition) -> tuple[Mismatch, ...]:
    """The steps (and compensations) the timeline recorded that ``definition`` describes
    otherwise: by index, the latest intent of each, compared on step name (when recorded),
    participant and action."""
    recorded: dict[tuple[int, str], dict[str, Any]] = {}
    for e in events:
        if e.kind in _INTENTS and e.step is not None and e.corrupt is None:
            recorded[(e.step, DO if e.kind == "intent" else "undo")] = e.detail
    found = []
    for (step, kind), detail in sorted(recorded.items()):
        name = _text(detail.get("name"))
        was = _describe_step(name, detail.get("participant"), detail.get("action"))
        if step >= len(definition.steps):
            found.append(Mismatch(step, kind, was, None))
            continue
        spec = definition.steps[step]
        action = spec.action if kind == DO else spec.compensation
        same = (
            (name is None or name == spec.name)
            and detail.get("participant") == spec.participant
            and detail.get("action") == action
        )
        if not same:
            found.append(
                Mismatch(step, kind, was, _describe_step(spec.name, spec.participant, action))
            )
    return tuple(found)


def _describe_step(name: Any, participant: Any, action: Any) -> str:
    call = f"{participant}.{action}"
    return f"{name} ({call})" if name else call


# --- texts -----------------------------------------------------------------------------------


def iso(at: float, timespec: str = "seconds") -> str:
    """``at`` (epoch seconds) as a local ISO 8601 time with its UTC offset."""
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec=timespec)


def span(seconds: float) -> str:
    """A duration for people, cut to its whole seconds: ``42 s``, ``4 m 59 s``, ``2 h 5 m``,
    ``3 d 4 h``."""
    total = int(abs(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} m {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _relative(at: float, now: float, future: str = "in {}", past: str = "{} ago") -> str:
    return (future if at >= now else past).format(span(at - now))


def _which(kind: str, step: int, name: str | None, attempt: int) -> str:
    label = f"step {step}{f' {name}' if name else ''}"
    return f"{'' if kind == DO else 'compensation of '}{label}, attempt {attempt}"


def _call(participant: str | None, action: str | None) -> str:
    if participant == CHILDREN and action:
        # A child step (Step.child) waits on its child saga, not on a participant's action.
        with contextlib.suppress(ValueError):
            _verb, name, version = child_ref(action)
            return f"child saga {name} v{version}"
    return f"{participant or '?'}.{action or '?'}"


def describe_wait(wait: Wait, now: float) -> str:
    """One line saying what a saga waits on."""
    if isinstance(wait, Reply):
        sent = "sent at an unknown time" if wait.sent_at is None else f"sent {iso(wait.sent_at)}"
        if wait.first_sent_at is not None and wait.first_sent_at != wait.sent_at:
            sent += f" (again, after a restart; first sent {iso(wait.first_sent_at)})"
        return (
            f"reply from {_call(wait.participant, wait.action)} "
            f"({_which(wait.kind, wait.step, wait.step_name, wait.attempt)}): {sent}, deadline "
            f"{iso(wait.deadline)} ({_relative(wait.deadline, now, past='passed {} ago')})"
        )
    if isinstance(wait, Backoff):
        text = (
            f"retry of {_call(wait.participant, wait.action)} "
            f"({_which(wait.kind, wait.step, wait.step_name, wait.attempt)}) due "
            f"{iso(wait.due)} ({_relative(wait.due, now, past='{} overdue')})"
        )
        if wait.failed_at is not None:
            text += (
                f"; attempt {wait.attempt - 1} failed {iso(wait.failed_at)}: "
                f"{' '.join((wait.failure or '-').split())}"
            )
        return text
    if isinstance(wait, MissingDefinition):
        label = f"{wait.definition} v{wait.version}"
        had = ", ".join(wait.registered) or "no definitions"
        by = f"a runtime (pid {wait.pid})" if wait.pid is not None else "a runtime"
        when = iso(wait.since)
        if wait.last_at != wait.since:
            when += f" (last {iso(wait.last_at)})"
        return (
            f"definition {label} is not registered: {by} that has only {had} left it "
            f"untouched {when}; it resumes when understudy starts with {label} among its "
            "definitions"
        )
    if isinstance(wait, Paused):
        text = f"paused by {wait.who} {iso(wait.since)}: {' '.join(wait.why.split())}"
        if wait.held is not None:
            kind, step, name, attempt = wait.held
            return text + f"; holding back {_which(kind, step, name, attempt)} until resumed"
        if wait.then is not None:
            return text + f"; meanwhile {describe_wait(wait.then, now)}, then holds what is next"
        return text
    if isinstance(wait, Unreadable):
        return (
            f"nothing it can act on: {wait.reason}; understudy parks it as failed when it loads it"
        )
    return f"nothing recorded: no request out and no retry due since {iso(wait.since)}"


def describe_owner(owner: Owner) -> str:
    """One line saying who works the saga's shard, or that nobody does."""
    resumes = "the saga resumes when understudy starts on this store"
    who = f"pid {owner.pid}" if owner.pid is not None else f"holder {owner.holder!r}"
    if owner.state == "remote" and owner.node:
        who += f" on {owner.node}"
    left = (
        ""
        if owner.expires_at is None
        else _relative(owner.expires_at, owner.checked_at, "valid for {}", "expired {} ago")
    )
    shard = f"shard {owner.shard}"
    if owner.state == "live":
        return f"owner: {shard}, {who} (running), lease {left}"
    if owner.state == "remote":
        return f"owner: {shard}, {who} (another machine: only its lease tells), lease {left}"
    if owner.state == "dead":
        return f"owner gone: {shard}'s holder, {who}, has exited; {resumes}"
    if owner.state == "orphan":
        app = f" (pid {owner.app_pid})" if owner.app_pid is not None else ""
        return (
            f"owner gone: {shard}'s holder, {who}, runs but its application{app} has exited; it "
            f"lets go within its watch interval, and {resumes}"
        )
    if owner.state == "free":
        return f"owner gone: nobody holds {shard} (understudy was stopped); {resumes}"
    if owner.state == "expired":
        return f"owner gone: {shard}'s lease ({who}) {left}, unrenewed; {resumes}"
    return f"owner gone: the store has no shards (no runtime has started on it); {resumes}"


def describe_stuck(diagnosis: Diagnosis) -> str:
    """``stuck (why, ...)`` or ``on time``."""
    return f"stuck ({', '.join(diagnosis.stuck)})" if diagnosis.stuck else "on time"


def describe(diagnosis: Diagnosis) -> list[str]:
    """The lines the command prints under a saga's verdict (:func:`describe_stuck`): what it
    waits on (for a missing definition, also what it waited on before) and its owner."""
    lines = [describe_wait(diagnosis.wait, diagnosis.now)]
    if isinstance(diagnosis.wait, MissingDefinition) and diagnosis.wait.then is not None:
        lines.append(f"then: {describe_wait(diagnosis.wait.then, diagnosis.now)}")
    lines.append(describe_owner(diagnosis.owner))
    return lines


def describe_restarts(found: Restarts) -> str:
    """``restarts: N`` and what they were."""
    if not found.count:
        return "restarts: 0"
    last = iso(found.last_at) if found.last_at is not None else "-"
    return (
        f"restarts: {found.count} (each a new incarnation resumed from its snapshot; "
        f"{found.recoveries} counted against the recovery cap; last {last})"
    )


def describe_mismatch(mismatch: Mismatch, label: str) -> str:
    """``step N was sent as ..., the new LABEL has ...``."""
    what = "step" if mismatch.kind == DO else "compensation of step"
    new = f"has {mismatch.new}" if mismatch.new else f"has no step {mismatch.step}"
    return f"{what} {mismatch.step} was sent as {mismatch.recorded}, the new {label} {new}"


def describe_verdict(verdict: Verdict) -> list[str]:
    """The lines of one saga of :func:`check_inflight`: its verdict, then every mismatch after
    the first (which the verdict's reason names)."""
    head = f"{verdict.saga_id}  {verdict.status}  {verdict.definition} v{verdict.version}"
    if verdict.outcome == RUNNABLE:
        return [f"{head}  runnable"]
    label = f"{verdict.definition} v{verdict.version}"
    return [f"{head}  {verdict.outcome}: {verdict.reason}"] + [
        f"  also {describe_mismatch(m, label)}" for m in verdict.mismatches[1:]
    ]


def describe_summary(check: InflightCheck) -> str:
    n = len(check.verdicts)
    sagas = f"{n} in-flight saga{'' if n == 1 else 's'}"
    if check.ok:
        return f"{sagas}, all runnable"
    counts = ", ".join(
        f"{check.count(outcome)} {outcome}"
        for outcome in (NOT_RUN, PARKS, REINTERPRETED, RUNNABLE)
        if check.count(outcome)
    )
    return f"{sagas}: {counts}"
