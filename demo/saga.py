"""The ORDER saga: what an order does, step by step, and how each step is undone.

Steps run in this order and are compensated in reverse: an order that cannot be charged releases
its stock and is cancelled; an order whose stock is gone is cancelled. Every step can be undone,
so the saga has no pivot: any refusal compensates everything done so far.

ORDER_WORKFLOW is the same order as a workflow (``--style workflow``): once the order exists,
the stock is reserved and the card charged at once; a refusal of either compensates the other
branch and then cancels the order.

ORDER_CHILD is the same order with its stock reservation as a saga of its own, RESERVATION,
which the order runs as a child (the crash harness's ``demo.chaos:child``): a card declined
after the reservation completed compensates the child as one step (the stock is released),
then cancels the order.
"""

from __future__ import annotations

from understudy import SagaDefinition, Step, WorkflowDefinition

ORDERS = "orders"
INVENTORY = "inventory"
PAYMENTS = "payments"

#: The participants every order talks to (registered names).
PARTICIPANT_NAMES = (ORDERS, INVENTORY, PAYMENTS)

ORDER = SagaDefinition(
    "order",
    1,
    [
        Step("create_order", ORDERS, "create", "cancel"),
        Step("reserve_inventory", INVENTORY, "reserve", "release"),
        Step("charge_payment", PAYMENTS, "charge", "refund"),
    ],
)

ORDER_WORKFLOW = WorkflowDefinition(
    "order",
    1,
    [
        Step("create_order", ORDERS, "create", "cancel"),
        Step("reserve_inventory", INVENTORY, "reserve", "release", after=["create_order"]),
        Step("charge_payment", PAYMENTS, "charge", "refund", after=["create_order"]),
    ],
)

#: The stock reservation as a saga of its own: ORDER_CHILD runs it as a child.
RESERVATION = SagaDefinition(
    "reservation", 1, [Step("reserve_inventory", INVENTORY, "reserve", "release")]
)

ORDER_CHILD = SagaDefinition(
    "order",
    1,
    [ORDER.steps[0], Step.child("reserve", RESERVATION, timeout=30.0), ORDER.steps[2]],
)

#: What ``python -m demo --style STYLE`` runs.
STYLES = {"orchestrated": ORDER, "workflow": ORDER_WORKFLOW}
