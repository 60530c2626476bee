from django.core.management.base import BaseCommand, CommandError

from core.exceptions import DomainError
from core.models import Tenant
from promos.models import RedemptionSession


class Command(BaseCommand):
    help = "Mark pending/approved redemption sessions past their expiry as expired (safe to run any time)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Only this tenant's sessions (slug).")

    def handle(self, *args, tenant=None, **options):
        scope = None
        if tenant:
            scope = Tenant.objects.filter(slug=tenant).first()
            if scope is None:
                raise CommandError(f"No tenant with slug {tenant!r}.")
        try:
            count = RedemptionSession.objects.expire_due(tenant=scope)
        except DomainError as error:  # resource_locked: a row stayed locked; nothing was changed
            raise CommandError(f"{error.render()} ({error.code})")
        self.stdout.write(f"Expired {count} redemption session(s).")
