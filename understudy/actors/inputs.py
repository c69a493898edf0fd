"""What a step's request carries: the saga's payload and earlier results, or only what the step
asks for (its ``args`` and ``inputs``).

A participant should see only the data its step needs: a narrowed request keeps other steps'
results away from it, and keeps requests small however many steps came before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from understudy.definitions import PAYLOAD, Step


class InputMissing(Exception):
    """A step's input names a value the payload or an earlier result does not hold."""


def resolve(path: str, payload: dict[str, Any], results: dict[str, Any]) -> Any:
    """The value ``path`` names: ``payload[.field...]`` or ``step_name[.field...]``."""
    root, *fields = path.split(".")
    if root == PAYLOAD:
        value: Any = payload
    elif root in results:
        value = results[root]
    else:
        raise InputMissing(f"step {root!r} has no result")
    walked = root
    for field in fields:
        if not isinstance(value, dict) or field not in value:
            raise InputMissing(
                f"{walked!r} holds no field {field!r}"
                + ("" if isinstance(value, dict) else f" (it is {type(value).__name__})")
            )
        value = value[field]
        walked = f"{walked}.{field}"
    return value


def request_data(
    step: Step, payload: dict[str, Any], results: dict[str, Any], readable: Iterable[str] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(payload, results)`` a request of ``step`` carries. ``readable``: the names of the
    results it may carry (None: all of them). Raises :class:`InputMissing`."""
    if step.narrowed:
        built = dict(step.args)
        for name, path in step.inputs.items():
            try:
                built[name] = resolve(path, payload, results)
            except InputMissing as exc:
                raise InputMissing(f"input {name!r} ({path}): {exc}") from None
        return built, {}
    if readable is None:
        return payload, dict(results)
    return payload, {name: results[name] for name in readable if name in results}
