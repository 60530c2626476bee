from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BookingsConfig(AppConfig):
    name = "bookings"
    verbose_name = _("Bookings")

    def ready(self):
        from bookings.metrics import REFUNDS_UNDER_WAY
        from core.metrics import read_at_scrape

        read_at_scrape(REFUNDS_UNDER_WAY)
