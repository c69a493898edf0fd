"""OpenTelemetry spans for sagas and their steps: an optional extra, not a dependency.

``pip install 'understudy[otel]'`` (opentelemetry-api; add opentelemetry-sdk and an exporter to
send spans anywhere), then::

    from understudy.telemetry import SagaTracer

    tracer = SagaTracer(us)  # the global tracer provider, or tracer_provider=...
    ...
    tracer.close()

Each saga is a span (``saga order``) from its start to its end, with a child span per request
(``do reserve``, ``undo reserve``: one per attempt, from its intent to its answer), events for
an abort, a debt and an operator's verb, and an error status when it parks (or a request
fails). Spans are made from the lifecycle events this runtime's subscription receives
(:meth:`understudy.Understudy.subscribe`), with the times the saga hosts recorded; a saga
resumed by this runtime after a restart gets its span from the first event seen here.
"""

from __future__ import annotations

import threading
from typing import Any

from understudy.lifecycle import SagaEvent

__all__ = ["SagaTracer"]

_STEP_START = {"step-started": "do", "compensation-started": "undo"}
_STEP_END = {"step-done": "do", "step-failed": None, "step-compensated": "undo"}
_SAGA_END = ("completed", "compensated", "failed")
_SAGA_EVENTS = ("compensating", "debt", "debt-settled", "operator")


class SagaTracer:
    """Turns a runtime's lifecycle events into OpenTelemetry spans, in a thread of its own,
    until :meth:`close` (it is a context manager). ``definition`` limits it to one definition's
    sagas."""

    def __init__(
        self, runtime: Any, tracer_provider: Any = None, definition: str | None = None
    ) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - depends on what is installed
            raise ImportError(
                "understudy.telemetry needs OpenTelemetry's API: pip install 'understudy[otel]'"
            ) from exc
        self._trace = trace
        self._tracer = trace.get_tracer("understudy", tracer_provider=tracer_provider)
        self._sagas: dict[str, Any] = {}
        self._steps: dict[tuple[str, int, str], Any] = {}
        self._subscription = runtime.subscribe(definition=definition)
        self._thread = threading.Thread(target=self._run, name="understudy-otel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for event in self._subscription:
            self.record(event)

    def record(self, event: SagaEvent) -> None:
        """Turn one lifecycle event into what it means for the spans."""
        at = int(event.at * 1e9)
        saga = self._saga(event, at)
        if event.kind in _STEP_START and event.step is not None:
            kind = _STEP_START[event.kind]
            key = (event.saga_id, event.step, kind)
            earlier = self._steps.pop(key, None)
            if earlier is not None:  # sent again (a restart, a retry): that attempt is over
                earlier.end(end_time=at)
            self._steps[key] = self._tracer.start_span(
                f"{kind} {event.step_name or event.step}",
                context=self._trace.set_span_in_context(saga),
                start_time=at,
                attributes=_attributes(event, kind=kind),
            )
        elif event.kind in _STEP_END and event.step is not None:
            # A failure names no side: the open request of that step is the one that failed.
            ends = _STEP_END[event.kind]
            for kind in [ends] if ends is not None else ["do", "undo"]:
                span = self._steps.pop((event.saga_id, event.step, kind), None)
                if span is None:
                    continue
                if event.kind == "step-failed":
                    span.set_status(self._error(event))
                span.end(end_time=at)
                break
        elif event.kind in _SAGA_EVENTS:
            saga.add_event(event.kind, attributes=_attributes(event), timestamp=at)
        elif event.kind in _SAGA_END:
            for key in [k for k in self._steps if k[0] == event.saga_id]:
                self._steps.pop(key).end(end_time=at)
            saga.set_attribute("understudy.status", event.kind)
            if event.kind == "failed":
                saga.set_status(self._error(event))
            saga.end(end_time=at)
            del self._sagas[event.saga_id]

    def _saga(self, event: SagaEvent, at: int) -> Any:
        span = self._sagas.get(event.saga_id)
        if span is None:
            span = self._tracer.start_span(
                f"saga {event.definition}",
                start_time=at,
                attributes={
                    "understudy.saga_id": event.saga_id,
                    "understudy.definition": event.definition,
                    "understudy.version": event.version,
                },
            )
            self._sagas[event.saga_id] = span
        return span

    def _error(self, event: SagaEvent) -> Any:
        from opentelemetry.trace import Status, StatusCode

        reason = event.detail.get("reason") or event.detail.get("outcome") or event.kind
        return Status(StatusCode.ERROR, str(reason))

    def close(self) -> None:
        """Stop, and end the spans still open (sagas not finished yet) where they stand."""
        self._subscription.close()
        self._thread.join(timeout=10)
        for span in [*self._steps.values(), *self._sagas.values()]:
            span.end()
        self._steps.clear()
        self._sagas.clear()

    def __enter__(self) -> SagaTracer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _attributes(event: SagaEvent, **extra: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"understudy.saga_id": event.saga_id}
    if event.step is not None:
        attributes["understudy.step"] = event.step
    if event.step_name:
        attributes["understudy.step_name"] = event.step_name
    if event.attempt is not None:
        attributes["understudy.attempt"] = event.attempt
    for key in ("participant", "action", "reason", "verb", "who", "why", "error"):
        value = event.detail.get(key)
        if isinstance(value, str | int | float | bool):
            attributes[f"understudy.{key}"] = value
    attributes.update({f"understudy.{k}": v for k, v in extra.items()})
    return attributes
