from django.core.management.base import BaseCommand

from bookings.models import Booking


class Command(BaseCommand):
    help = "Mark holds past their expiry as expired. (Expired holds never count toward capacity, swept or not.)"

    def handle(self, *args, **options):
        count = Booking.objects.expire_holds()
        self.stdout.write(f"Expired holds: {count}")
