from bookings.services import reconcile_checkouts
from core.management.sweep import SweepCommand


class Command(SweepCommand):
    help = (
        "Ask the payment provider how each checkout still 'open' an hour after its hold ended was settled, and "
        "settle it as its lost webhook event would have: a payment confirms the booking if its date is still "
        "free, else is refunded; an expired session closes the checkout. A webhook that never got through (an "
        "outage longer than the provider's retries, a wrong signing secret) otherwise left the money taken and "
        "the booking expired. A checkout whose row is busy, or whose provider did not answer, is left for the "
        "next run (named on stderr): exit 3."
    )

    def handle(self, *args, **options):
        result = reconcile_checkouts()
        self.stdout.write(f"Checkouts settled from the provider's own record: {result.done}")
        for pk, refusal in result.skipped:
            self.stderr.write(f"Booking #{pk} left for the next run: {refusal.code}: {refusal.render()}")
        self.exit_for(result)
