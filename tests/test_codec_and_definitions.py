"""Specification of the msgpack codec and of saga definitions."""

# Assertions read `expected == actual`, the house style for specification tests.

from __future__ import annotations

import datetime

import attrs
import pytest

from understudy import codec
from understudy.definitions import (
    DEFAULT_COMPENSATION_RETRY,
    Irreversible,
    RetryPolicy,
    SagaDefinition,
    Step,
)
from understudy.errors import CorruptRecord, DefinitionError, PayloadError

# --- codec ---------------------------------------------------------------------------------------


def test_nested_values_round_trip() -> None:
    """Nested dicts and lists of bytes, str, int, float, bool and None decode unchanged."""
    value = {
        "order": {"id": "o-1", "total": 12.5, "paid": True, "coupon": None},
        "lines": [{"sku": b"\x00\xffraw", "qty": 3}, [1, -2, [2**63, -(2**63)]]],
        "empty": {},
        "nothing": [],
        7: "integer key",
    }

    assert value == codec.decode(codec.encode(value))


def test_a_tuple_comes_back_as_a_list() -> None:
    """msgpack has no tuple: a tuple is stored as an array and read back as a list."""
    assert {"pair": [1, "a"]} == codec.decode(codec.encode({"pair": (1, "a")}))


def test_encode_returns_bytes() -> None:
    """encode() produces bytes, what every backend stores."""
    assert bytes is type(codec.encode({"a": 1}))


def test_an_unencodable_field_is_named_by_its_dotted_path() -> None:
    """A date nested in a dict raises PayloadError naming 'customer.born' and the type 'date'."""
    with pytest.raises(PayloadError) as raised:
        codec.encode({"customer": {"born": datetime.date(2000, 1, 1)}}, "payload")

    message = str(raised.value)
    assert "customer.born" in message
    assert "date" in message
    assert "payload" in message


def test_an_unencodable_list_item_is_named_by_its_index() -> None:
    """A set inside a list raises PayloadError naming 'items[1]'."""
    with pytest.raises(PayloadError) as raised:
        codec.encode({"items": [1, {2, 3}]}, "payload")

    assert "items[1]" in str(raised.value)


def test_an_integer_too_large_for_msgpack_is_a_payload_error() -> None:
    """An int beyond 64 bits raises PayloadError naming the field."""
    with pytest.raises(PayloadError) as raised:
        codec.encode({"amount": 2**64}, "payload")

    assert "amount" in str(raised.value)


def test_a_payload_error_is_also_a_type_error() -> None:
    """PayloadError subclasses TypeError, so callers catching TypeError keep working."""
    with pytest.raises(TypeError):
        codec.encode({"when": datetime.datetime(2000, 1, 1)})


def test_check_encodable_accepts_what_msgpack_can_encode() -> None:
    """check_encodable() is silent for a value made only of encodable types."""
    codec.check_encodable({"a": [1, 2.0, "x", b"y", None, True, {"b": (1,)}]}, "payload")


def test_check_encodable_rejects_a_non_scalar_dict_key() -> None:
    """A dict keyed by a tuple is reported by check_encodable() as an unencodable key."""
    with pytest.raises(PayloadError) as raised:
        codec.check_encodable({"lookup": {(1, 2): "x"}}, "payload")

    assert "lookup key (1, 2)" in str(raised.value)


def test_a_tuple_keyed_dict_is_refused_at_encode_not_at_decode() -> None:
    """Whatever encode() accepts, decode() reads back: a tuple-keyed dict is refused up front."""
    value = {(1, 2): "x"}
    try:
        data = codec.encode(value, "payload")
    except PayloadError:
        return
    assert value == codec.decode(data)


def test_bytes_that_are_not_msgpack_raise_corrupt_record() -> None:
    """decode() of bytes that are not msgpack (0xc1 is never used) raises CorruptRecord."""
    with pytest.raises(CorruptRecord) as raised:
        codec.decode(b"\xc1", "snapshot of saga 's1'")

    assert "snapshot of saga 's1'" in str(raised.value)


def test_truncated_msgpack_raises_corrupt_record() -> None:
    """decode() of a truncated record raises CorruptRecord."""
    with pytest.raises(CorruptRecord):
        codec.decode(codec.encode({"a": "long enough"})[:-3])


# --- definitions ---------------------------------------------------------------------------------


def reversible(name: str, participant: str = "payments") -> Step:
    return Step(name, participant, f"do_{name}", compensation=f"undo_{name}")


def one_way(name: str, participant: str = "mailer") -> Step:
    return Step(name, participant, f"do_{name}", irreversible=Irreversible(instead="alert ops"))


def test_a_step_without_compensation_is_rejected() -> None:
    """A step with neither compensation nor Irreversible raises DefinitionError naming it."""
    with pytest.raises(DefinitionError) as raised:
        SagaDefinition("order", 1, [reversible("reserve"), Step("charge", "payments", "charge")])

    message = str(raised.value)
    assert "'charge'" in message
    assert "Irreversible" in message


def test_an_irreversible_step_is_accepted_and_is_the_pivot() -> None:
    """A step declared Irreversible needs no compensation, and the first one is the pivot."""
    definition = SagaDefinition(
        "order", 1, [reversible("reserve"), one_way("ship"), one_way("email")]
    )

    assert 1 == definition.pivot


def test_a_fully_compensable_saga_has_no_pivot() -> None:
    """When every step can be compensated, pivot is None."""
    assert None is SagaDefinition("order", 1, [reversible("a"), reversible("b")]).pivot


def test_duplicate_step_names_are_rejected() -> None:
    """Two steps with the same name raise DefinitionError naming the name."""
    with pytest.raises(DefinitionError) as raised:
        SagaDefinition("order", 1, [reversible("charge"), reversible("charge", "bank")])

    assert "'charge'" in str(raised.value)


def test_a_definition_without_steps_is_rejected() -> None:
    """A definition with no steps raises DefinitionError."""
    with pytest.raises(DefinitionError):
        SagaDefinition("order", 1, [])


def test_a_definition_without_a_name_is_rejected() -> None:
    """A definition with an empty name raises DefinitionError."""
    with pytest.raises(DefinitionError):
        SagaDefinition("", 1, [reversible("a")])


def test_a_step_with_both_compensation_and_irreversible_is_rejected() -> None:
    """A step may have a compensation or be Irreversible, not both."""
    both = Step("ship", "warehouse", "ship", compensation="recall", irreversible=Irreversible("x"))

    with pytest.raises(DefinitionError) as raised:
        SagaDefinition("order", 1, [both])

    assert "'ship'" in str(raised.value)


@pytest.mark.parametrize("instead", ["", "   "])
def test_irreversible_must_say_what_to_do_instead(instead: str) -> None:
    """Irreversible with an empty or blank 'instead' raises DefinitionError."""
    with pytest.raises(DefinitionError):
        Irreversible(instead=instead)


def test_a_step_with_an_empty_participant_or_action_is_rejected() -> None:
    """A step must name its participant and its action."""
    with pytest.raises(DefinitionError):
        SagaDefinition("order", 1, [Step("a", "", "do_a", compensation="undo_a")])
    with pytest.raises(DefinitionError):
        SagaDefinition("order", 1, [Step("a", "payments", "", compensation="undo_a")])


def test_an_unknown_recovery_policy_is_rejected() -> None:
    """on_recovery must be 'resume' or 'compensate'."""
    with pytest.raises(DefinitionError):
        SagaDefinition("order", 1, [reversible("a")], on_recovery="retry")  # type: ignore[arg-type]


def test_something_that_is_not_a_step_is_rejected() -> None:
    """Every entry of steps must be a Step."""
    with pytest.raises(DefinitionError):
        SagaDefinition("order", 1, [reversible("a"), "charge"])  # type: ignore[list-item]


def test_retry_delay_grows_geometrically_and_is_capped() -> None:
    """The n-th retry waits backoff * multiplier ** (n - 1), never more than max_backoff."""
    policy = RetryPolicy(attempts=6, backoff=1.0, multiplier=2.0, max_backoff=5.0)

    assert [1.0, 2.0, 4.0, 5.0, 5.0] == [policy.delay(n) for n in range(1, 6)]


def test_default_compensation_retry_outlasts_the_default_step_retry() -> None:
    """Compensations are retried more often than forward steps by default."""
    assert DEFAULT_COMPENSATION_RETRY.attempts > RetryPolicy().attempts


@pytest.mark.parametrize("timeout", [0, -1.5])
def test_a_non_positive_timeout_is_rejected(timeout: float) -> None:
    """A step timeout must be greater than zero."""
    with pytest.raises(DefinitionError) as raised:
        Step("a", "payments", "do_a", compensation="undo_a", timeout=timeout)

    assert "timeout" in str(raised.value)


@pytest.mark.parametrize(
    "field, value", [("attempts", 0), ("backoff", -0.1), ("multiplier", 0), ("max_backoff", -1)]
)
def test_an_invalid_retry_policy_is_rejected(field: str, value: float) -> None:
    """attempts and multiplier must be positive; backoff and max_backoff must not be negative."""
    with pytest.raises(DefinitionError) as raised:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]

    assert field in str(raised.value)


def test_definitions_are_frozen() -> None:
    """A definition, its steps and its policies cannot be changed after they are built."""
    definition = SagaDefinition("order", 1, [reversible("a")])

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        definition.version = 2  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        definition.steps[0].timeout = 1.0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        definition.steps[0].retry.attempts = 9  # type: ignore[misc]


def test_equal_definitions_are_equal_and_hash_alike() -> None:
    """Two definitions built from the same data (list or tuple of steps) are one dict key."""
    first = SagaDefinition("order", 1, [reversible("a"), one_way("b")])
    second = SagaDefinition("order", 1, (reversible("a"), one_way("b")))

    assert first == second
    assert hash(first) == hash(second)
    assert {first: "v1"} == {second: "v1"}


def test_definitions_that_differ_are_not_equal() -> None:
    """A different version or a different step makes a different definition."""
    base = SagaDefinition("order", 1, [reversible("a")])

    assert base != SagaDefinition("order", 2, [reversible("a")])
    assert base != SagaDefinition("order", 1, [reversible("a", "bank")])


def test_participants_are_every_participant_named_once() -> None:
    """participants is the set of participant names the steps send to."""
    definition = SagaDefinition(
        "order", 1, [reversible("a", "payments"), reversible("b", "stock"), one_way("c", "stock")]
    )

    assert frozenset({"payments", "stock"}) == definition.participants


def test_key_is_name_and_version() -> None:
    """key is the (name, version) pair a saga is pinned to."""
    assert ("order", 3) == SagaDefinition("order", 3, [reversible("a")]).key
