"""The demo's orders and opening stock, generated from a seed.

Everything here is a pure function of ``(count, seed)`` so that a run can be repeated exactly and
so that the ledger check knows what was asked for without trusting anything the run recorded.
About one card in ten is declined, and a few skus are stocked below what their orders ask for, so
they run out part-way through the run and the late orders for them are refused.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from demo.participants import DECLINED_SUFFIX

#: Unit prices in cents.
PRICES = {
    "kettle": 3499,
    "lamp": 2250,
    "mug": 899,
    "chair": 8900,
    "rug": 12900,
    "clock": 4100,
}
#: Skus stocked below demand: these run out during the run.
SCARCE = ("lamp", "rug")
#: Share of a scarce sku's demand that is in stock at the start.
SCARCE_SHARE = 0.6
DECLINE_RATE = 0.1


@attrs.frozen
class Order:
    """One order as the shop submits it; :meth:`payload` is what the saga carries."""

    order_id: str
    customer: str
    sku: str
    qty: int
    amount: int
    card: str

    @property
    def declined(self) -> bool:
        return self.card.endswith(DECLINED_SUFFIX)

    def payload(self) -> dict[str, Any]:
        return attrs.asdict(self)


def make_orders(count: int, seed: int) -> list[Order]:
    """``count`` orders; about :data:`DECLINE_RATE` of them pay with a declined card."""
    rng = random.Random(seed)
    skus = sorted(PRICES)
    orders = []
    for number in range(1, count + 1):
        sku = rng.choice(skus)
        qty = rng.randint(1, 3)
        if rng.random() < DECLINE_RATE:
            last = DECLINED_SUFFIX
        else:
            last = f"{rng.randrange(10, 10000):04d}"
            if last == DECLINED_SUFFIX:
                last = "4242"
        orders.append(
            Order(
                order_id=f"order-{number:05d}",
                customer=f"customer-{rng.randrange(1, count // 3 + 2):04d}",
                sku=sku,
                qty=qty,
                amount=qty * PRICES[sku],
                card=f"4000-{rng.randrange(1000, 10000)}-{rng.randrange(1000, 10000)}-{last}",
            )
        )
    return orders


def opening_stock(orders: list[Order]) -> dict[str, int]:
    """Stock per sku: enough for every order of a plentiful sku, too little for a scarce one."""
    demand = dict.fromkeys(PRICES, 0)
    for order in orders:
        demand[order.sku] += order.qty
    return {
        sku: int(wanted * SCARCE_SHARE) if sku in SCARCE else wanted + 5
        for sku, wanted in demand.items()
    }
