from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = _("Lockstep core")

    def ready(self):
        from core import checks  # noqa: F401 - registers the system checks
        from core.api import authentication  # noqa: F401 - registers its OpenAPI security scheme
        from core.history import install_context_injector

        install_context_injector()

        from core.metrics import read_at_scrape
        from core.notifications import LEFT_SENDING

        read_at_scrape(LEFT_SENDING)
