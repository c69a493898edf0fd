"""Saga definitions: what a saga does, step by step, and how each step is undone.

A definition is plain data (names, not callables) so it can travel to every process of a
multi-process actor system and be compared across versions. It is validated when it is built:
a step without a compensation is rejected unless it is declared :class:`Irreversible`, with what to
do instead. The first irreversible step is the saga's pivot: a failure before it compensates, a
failure after it recovers forward (retries) and never compensates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from understudy import codec
from understudy.errors import DefinitionError, PayloadError

RecoveryPolicy = Literal["resume", "compensate"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise DefinitionError(f"{attribute.name} must be greater than 0, got {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise DefinitionError(f"{attribute.name} must not be negative, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """How often to try a step (or a compensation) and how long to wait between tries.

    ``attempts`` counts every try, the first included. The n-th retry waits
    ``backoff * multiplier ** (n - 1)`` seconds, capped at ``max_backoff``.
    """

    attempts: int = attrs.field(default=3, validator=_positive)
    backoff: float = attrs.field(default=0.05, validator=_not_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    max_backoff: float = attrs.field(default=5.0, validator=_not_negative)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        return float(min(self.max_backoff, self.backoff * self.multiplier ** (retry - 1)))


@attrs.frozen
class Irreversible:
    """Marks a step that cannot be undone, and says what to do instead (recorded and reported)."""

    instead: str = attrs.field()

    @instead.validator
    def _check(self, attribute: attrs.Attribute, value: str) -> None:
        if not value or not value.strip():
            raise DefinitionError(
                "Irreversible(instead=...) must say what to do instead of compensating, "
                'for example Irreversible(instead="log and alert the payments team")'
            )


#: Compensations are retried longer than forward steps by default: giving up on one parks the saga.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(attempts=5, backoff=0.05, max_backoff=2.0)


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _definition_ref(definition: SagaDefinition | None) -> str:
    return "None" if definition is None else f"<{definition.name} v{definition.version}>"


def _mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


#: The participant that runs child sagas (:meth:`Step.child`); the runtime registers it.
CHILDREN = "understudy.children"
#: The actions of a child step: run the child, and compensate it (``run:<name>:<version>``).
RUN = "run"
UNWIND = "unwind"
#: Seconds a child step waits for its child by default (each attempt; see :meth:`Step.child`).
CHILD_TIMEOUT = 300.0


@attrs.frozen
class Step:
    """One step of a saga: ask ``participant`` to run ``action``; undo it with ``compensation``.

    ``timeout`` is how long to wait for the participant's reply before the attempt counts as
    failed (the request may still have been applied, so a timed-out step is compensated on abort).

    What the request carries: by default the saga's payload and the results of the steps before
    (in a :class:`WorkflowDefinition`, of the steps it depends on). A step that declares ``args``
    or ``inputs`` carries only what it asks for, as its ``payload`` (and no earlier results):
    ``args`` are constants of the step, ``inputs`` name where each value comes from
    (``"payload"``, ``"payload.field"``, ``"step_name"``, ``"step_name.field.subfield"``), so
    ``inputs={"order_id": "create_order.id"}`` hands the participant the id the step
    ``create_order`` returned, and nothing else. Compensations carry the same.

    ``after`` (workflows only): the steps this one depends on; it starts once they completed.

    A step can be a saga of its own: see :meth:`child`.
    """

    name: str
    participant: str
    action: str
    compensation: str | None = None
    irreversible: Irreversible | None = None
    retry: RetryPolicy = RetryPolicy()
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    timeout: float = attrs.field(default=5.0, validator=_positive)
    after: tuple[str, ...] = attrs.field(default=(), converter=_names)
    # Not hashed (a dict is not hashable); still compared.
    args: dict[str, Any] = attrs.field(factory=dict, converter=_mapping, hash=False)
    inputs: dict[str, str] = attrs.field(factory=dict, converter=_mapping, hash=False)
    #: The definition of the child saga this step runs (set by :meth:`child`), else None.
    saga: SagaDefinition | None = attrs.field(default=None, repr=_definition_ref)

    @property
    def narrowed(self) -> bool:
        """Whether the step's request carries only its ``args`` and ``inputs``."""
        return bool(self.args or self.inputs)

    @classmethod
    def child(
        cls,
        name: str,
        definition: SagaDefinition,
        *,
        irreversible: Irreversible | None = None,
        retry: RetryPolicy = RetryPolicy(),
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        timeout: float = CHILD_TIMEOUT,
        after: str | Iterable[str] = (),
        args: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
    ) -> Step:
        """A step that runs ``definition`` as a saga of its own, a child, and waits for it.

        The child's id is ``"<parent id>.<step name>"`` (:func:`child_id`), so a step retried,
        resent after a crash or run again by a restarted runtime finds the same child: it is
        started once. Its payload is what the step's request carries as payload (the parent's
        payload; with ``args`` or ``inputs``, exactly those). The step completes with the
        child's results (a map of its step names to their results) when the child completes,
        and is refused when the child ends compensated (the refusal's data is the child's
        failure), so the parent compensates what ran before. A child parked as failed fails the
        step (retried, then the parent compensates).

        Compensating the step compensates the child as one step: a child still running is
        cancelled, a completed one is compensated in reverse (its host takes it up again), one
        that never started is recorded as compensated so that it never starts. A child whose
        definition has an irreversible step cannot be undone: declare the step
        ``irreversible=Irreversible(instead=...)``.

        ``timeout`` bounds each wait for the child (and for its compensation); it is longer
        than a plain step's by default, since a child runs several steps. The child's own
        steps keep their own retries and timeouts.
        """
        if not isinstance(definition, SagaDefinition):
            raise DefinitionError(
                f"step {name!r}: Step.child takes the child's SagaDefinition (or "
                f"WorkflowDefinition), not {type(definition).__name__}"
            )
        ref = f"{definition.name}:{definition.version}"
        return cls(
            name,
            CHILDREN,
            f"{RUN}:{ref}",
            None if irreversible is not None else f"{UNWIND}:{ref}",
            irreversible,
            retry,
            compensation_retry,
            timeout,
            after,
            dict(args or {}),
            dict(inputs or {}),
            definition,
        )


def child_id(parent: str, step: str) -> str:
    """The id of the child saga that step ``step`` of saga ``parent`` runs."""
    return f"{parent}.{step}"


def child_ref(action: str) -> tuple[str, str, int]:
    """``(verb, definition name, version)`` of a child step's action or compensation
    (``run:<name>:<version>``, ``unwind:<name>:<version>``); ValueError when it is not one."""
    verb, rest = action.split(":", 1)
    name, version = rest.rsplit(":", 1)
    if verb not in (RUN, UNWIND) or not name:
        raise ValueError(action)
    return verb, name, int(version)


def _to_steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


#: In a step's ``inputs``, the root that names the saga's payload (not a step).
PAYLOAD = "payload"


@attrs.frozen
class SagaDefinition:
    """A named, versioned, ordered list of steps.

    ``on_recovery`` says what a saga that was interrupted mid-forward does after a crash:
    ``"resume"`` (the default) goes on forward, ``"compensate"`` undoes what it started.
    A saga that was compensating always finishes compensating.
    """

    name: str
    version: int
    steps: tuple[Step, ...] = attrs.field(converter=_to_steps)
    on_recovery: RecoveryPolicy = "resume"

    def __attrs_post_init__(self) -> None:
        where = f"saga definition {self.name!r} v{self.version}"
        if not self.name:
            raise DefinitionError("a saga definition needs a non-empty name")
        if not self.steps:
            raise DefinitionError(f"{where} has no steps")
        if self.on_recovery not in ("resume", "compensate"):
            raise DefinitionError(
                f"{where}: on_recovery must be 'resume' or 'compensate', got {self.on_recovery!r}"
            )
        seen: set[str] = set()
        for step in self.steps:
            if not isinstance(step, Step):
                raise DefinitionError(f"{where}: {step!r} is not a Step")
            if step.name in seen:
                raise DefinitionError(f"{where}: step name {step.name!r} is used twice")
            seen.add(step.name)
            if not step.participant or not step.action:
                raise DefinitionError(
                    f"{where}, step {step.name!r}: participant and action must be non-empty"
                )
            if step.compensation is None and step.irreversible is None:
                raise DefinitionError(
                    f"{where}, step {step.name!r} has no compensation. Give it one "
                    "(compensation='name of the undo action') or declare it irreversible with "
                    "what to do instead (irreversible=Irreversible(instead='log and alert'))"
                )
            if step.compensation is not None and step.irreversible is not None:
                raise DefinitionError(
                    f"{where}, step {step.name!r} has both a compensation and Irreversible(); "
                    "choose one"
                )
            _check_child(where, step)
        self._check_order(where)
        for index, step in enumerate(self.steps):
            self._check_inputs(where, step, self.earlier(index))

    def _check_order(self, where: str) -> None:
        for step in self.steps:
            if step.after:
                raise DefinitionError(
                    f"{where}, step {step.name!r} declares after={list(step.after)}: a saga's "
                    "steps run one after another in the order listed; for steps that run when "
                    "their dependencies complete, use WorkflowDefinition"
                )

    def earlier(self, index: int) -> frozenset[str]:
        """The names of the steps whose results step ``index`` may read: those before it."""
        return frozenset(step.name for step in self.steps[:index])

    def _check_inputs(self, where: str, step: Step, readable: frozenset[str]) -> None:
        here = f"{where}, step {step.name!r}"
        try:
            codec.check_encodable(step.args, f"args of step {step.name!r}")
        except PayloadError as exc:
            raise DefinitionError(f"{here}: {exc}") from None
        for name, path in step.inputs.items():
            if not isinstance(name, str) or not isinstance(path, str) or not path:
                raise DefinitionError(
                    f"{here}: inputs map names to where the value comes from, as text "
                    f"('payload.field' or 'step_name.field'); got {name!r}: {path!r}"
                )
            if name in step.args:
                raise DefinitionError(f"{here}: {name!r} is both in args and in inputs")
            root = path.split(".", 1)[0]
            if root == PAYLOAD:
                if PAYLOAD in {s.name for s in self.steps}:
                    raise DefinitionError(
                        f"{here}: input {name!r} reads 'payload', and a step is also named "
                        "'payload'; rename that step"
                    )
                continue
            if root not in readable:
                known = {s.name for s in self.steps}
                raise DefinitionError(
                    f"{here}: input {name!r} reads {path!r}, but "
                    + (
                        f"step {root!r} does not complete before this one; a step reads only "
                        "the results of steps that complete before it starts"
                        + (
                            f" (in a workflow, add {root!r} to its after=)"
                            if isinstance(self, WorkflowDefinition)
                            else ""
                        )
                        if root in known
                        else f"there is no step {root!r}; inputs start with 'payload' or the "
                        "name of an earlier step"
                    )
                )

    @property
    def key(self) -> tuple[str, int]:
        """The (name, version) pair a saga is pinned to."""
        return (self.name, self.version)

    @property
    def pivot(self) -> int | None:
        """Index of the first irreversible step, or None when every step can be compensated."""
        for index, step in enumerate(self.steps):
            if step.irreversible is not None:
                return index
        return None

    @property
    def participants(self) -> frozenset[str]:
        """Every participant name the definition sends to."""
        return frozenset(step.participant for step in self.steps)


@attrs.frozen
class WorkflowDefinition(SagaDefinition):
    """A saga whose steps declare the steps they depend on (``Step(..., after=[...])``).

    Independent steps run in parallel; a step starts once every step it depends on completed,
    and reads their results. On failure, compensation follows the graph in reverse: a step is
    compensated only after every step that depends on it was compensated (or never started),
    and independent branches are compensated at the same time.

    The graph is checked here: an unknown or repeated dependency, a cycle, and a compensatable
    step that depends on an irreversible one (it could fail after the irreversible step ran,
    leaving that step standing with nothing undone before it) are refused. Once an irreversible
    step has started, the workflow recovers forward only: a step that then fails parks it.
    """

    #: For each step (by index), the indexes of the steps it depends on.
    dependencies: tuple[tuple[int, ...], ...] = attrs.field(
        init=False, default=(), eq=False, repr=False
    )
    #: For each step (by index), the indexes of the steps that depend on it.
    dependents: tuple[tuple[int, ...], ...] = attrs.field(
        init=False, default=(), eq=False, repr=False
    )
    #: For each step (by index), the names of every step it depends on, directly or not:
    #: computed once, since every request of the step reads it.
    _readable: tuple[frozenset[str], ...] = attrs.field(
        init=False, default=(), eq=False, repr=False, alias="_readable"
    )

    def _check_order(self, where: str) -> None:
        index = {step.name: i for i, step in enumerate(self.steps)}
        for step in self.steps:
            here = f"{where}, step {step.name!r}"
            for name in step.after:
                if name == step.name:
                    raise DefinitionError(
                        f"{here} depends on itself; remove {name!r} from its after="
                    )
                if name not in index:
                    raise DefinitionError(
                        f"{here} depends on {name!r}, which is not a step of this workflow "
                        f"(its steps: {', '.join(index)})"
                    )
            if len(set(step.after)) != len(step.after):
                raise DefinitionError(
                    f"{here} names a dependency twice: {list(step.after)}; list it once"
                )
        deps = tuple(tuple(index[name] for name in step.after) for step in self.steps)
        object.__setattr__(self, "dependencies", deps)
        after: list[list[int]] = [[] for _ in self.steps]
        for i, ds in enumerate(deps):
            for d in ds:
                after[d].append(i)
        object.__setattr__(self, "dependents", tuple(tuple(a) for a in after))
        cycle = _cycle(deps)
        if not cycle:
            readable = tuple(
                frozenset(self.steps[a].name for a in self.ancestors(i))
                for i in range(len(self.steps))
            )
            object.__setattr__(self, "_readable", readable)
        if cycle:
            names = " -> ".join(self.steps[i].name for i in cycle)
            raise DefinitionError(
                f"{where}: the steps depend on each other in a cycle: {names}; break it by "
                "removing one of these dependencies from its step's after="
            )
        for i, step in enumerate(self.steps):
            if step.compensation is None:
                continue
            for a in sorted(self.ancestors(i)):
                if self.steps[a].irreversible is not None:
                    raise DefinitionError(
                        f"{where}, step {step.name!r} can be compensated but depends on the "
                        f"irreversible step {self.steps[a].name!r}: if it failed, everything "
                        "before would be compensated while that step stays done. Make it "
                        "irreversible too, or order it before the irreversible step"
                    )

    def ancestors(self, index: int) -> set[int]:
        """The indexes of every step that ``index`` depends on, directly or not."""
        found: set[int] = set()
        todo = list(self.dependencies[index])
        while todo:
            i = todo.pop()
            if i not in found:
                found.add(i)
                todo.extend(self.dependencies[i])
        return found

    def earlier(self, index: int) -> frozenset[str]:
        """The steps whose results step ``index`` may read: the ones it depends on, directly
        or not (they all complete before it starts)."""
        return self._readable[index]


def _check_child(where: str, step: Step) -> None:
    here = f"{where}, step {step.name!r}"
    if step.saga is None:
        if step.participant == CHILDREN:
            raise DefinitionError(
                f"{here} names participant {CHILDREN!r}, which runs child sagas: build the step "
                "with Step.child(name, definition)"
            )
        return
    if step.participant != CHILDREN:
        raise DefinitionError(
            f"{here} carries a child saga but names participant {step.participant!r}: build "
            "it with Step.child(name, definition)"
        )
    if "." in step.name:
        raise DefinitionError(
            f"{here} runs a child saga, whose id is '<parent id>.{step.name}': a child step's "
            "name must not contain '.'; rename the step"
        )
    if step.saga.pivot is not None and step.irreversible is None:
        irreversible = step.saga.steps[step.saga.pivot].name
        raise DefinitionError(
            f"{here} runs child saga {step.saga.name!r}, whose step {irreversible!r} is "
            "irreversible, so the child cannot be compensated once it passed it; declare the "
            "step Step.child(..., irreversible=Irreversible(instead='...'))"
        )


def with_children(definitions: Iterable[SagaDefinition]) -> tuple[SagaDefinition, ...]:
    """``definitions`` and, after them, the definitions of every child saga their steps run
    (their children's too), each once. Two different definitions under one name and version
    raise :class:`DefinitionError`."""
    found: dict[tuple[str, int], SagaDefinition] = {}
    todo = list(definitions)
    while todo:
        definition = todo.pop(0)
        known = found.get(definition.key)
        if known is None:
            found[definition.key] = definition
            todo.extend(step.saga for step in definition.steps if step.saga is not None)
        elif known != definition:
            raise DefinitionError(
                f"two different saga definitions are named {definition.name!r} "
                f"v{definition.version} (one may be a child saga's); give one another name or "
                "version"
            )
    return tuple(found.values())


def has_children(definitions: Iterable[SagaDefinition]) -> bool:
    """Whether any step of ``definitions`` runs a child saga."""
    return any(step.saga is not None for d in definitions for step in d.steps)


def _cycle(deps: tuple[tuple[int, ...], ...]) -> list[int]:
    """A cycle of the graph (its step indexes, the first repeated at the end), or []."""
    state = [0] * len(deps)  # 0 unseen, 1 on the path, 2 finished
    path: list[int] = []

    def visit(i: int) -> list[int]:
        state[i] = 1
        path.append(i)
        for d in deps[i]:
            if state[d] == 1:
                return [*path[path.index(d) :], d]
            if state[d] == 0:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[i] = 2
        return []

    for start in range(len(deps)):
        if state[start] == 0:
            found = visit(start)
            if found:
                return found
    return []
