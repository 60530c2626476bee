from bookings.models import Booking
from core.exceptions import LockContended
from core.management.base import GuardedCommand


class Command(GuardedCommand):
    help = (
        "Mark holds past their expiry as expired, one row per transaction, each judged by the database clock "
        "when it acts. Expired holds never count toward capacity, swept or not. Rows busy past lock_timeout "
        "are left for the next run: exit 3, run again shortly."
    )

    def handle(self, *args, **options):
        result = Booking.objects.expire_holds()
        self.stdout.write(f"Expired holds: {result.done}")
        for booking_id, refusal in result.skipped:
            self.stderr.write(f"Booking #{booking_id} left for the next run: {refusal.code}: {refusal.render()}")
        refusals = [refusal for _pk, refusal in result.skipped]
        refused = [refusal for refusal in refusals if not isinstance(refusal, LockContended)]
        if refusals:  # exit 1 for a refusal to look at, else 3 when rows were only busy
            raise (refused or refusals)[0]
