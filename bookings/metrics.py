"""The bookings' gauges read at scrape time (core.metrics.AT_SCRAPE)."""

from bookings.models import Checkout
from core.metrics import CountsAtScrape

UNDER_WAY = (
    Checkout.RefundState.PENDING,
    Checkout.RefundState.FAILED,
    Checkout.RefundState.SUBMITTED,
    Checkout.RefundState.EXHAUSTED,
)

# Whichever process gave a refund up (most often the worker's retry_refunds, whose counters a scrape of the
# web server does not see), the rows say it: ``exhausted`` > 0 means an operator must act.
REFUNDS_UNDER_WAY = CountsAtScrape(
    "lockstep_refunds",
    "Refunds owed and not yet made, by refund state (bookings_checkout, now): exhausted waits for an operator.",
    ("state",),
    f"SELECT refund_state, count(*) FROM {Checkout._meta.db_table} "  # noqa: S608 - names from _meta, values ours
    f"WHERE refund_state IN ({', '.join(repr(str(state)) for state in UNDER_WAY)}) GROUP BY 1",
    always=[(str(state),) for state in UNDER_WAY],
)
