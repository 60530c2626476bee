from bookings.models import Booking
from core.management.sweep import SweepCommand


class Command(SweepCommand):
    help = (
        "Mark holds past their expiry as expired, one row per transaction, each judged by the database clock "
        "when it acts. Expired holds never count toward capacity, swept or not. Rows busy past lock_timeout "
        "are left for the next run: exit 3, run again shortly."
    )

    def handle(self, *args, **options):
        result = Booking.objects.expire_holds()
        self.report(result, done="Expired holds", row="Booking")
        self.exit_for(result)
