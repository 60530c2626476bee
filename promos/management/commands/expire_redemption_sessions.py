from django.core.management.base import CommandError

from core.management.base import GuardedCommand
from core.models import Tenant
from promos.models import RedemptionSession


class Command(GuardedCommand):
    """Sweep overdue sessions through ``RedemptionSession.objects.expire_due``.

    A row a consume, cancel or approve in flight holds is skipped, never waited for:
    the next run's (every reader takes it for expired meanwhile).
    """

    help = (
        "Mark pending/approved redemption sessions past their expiry (database clock) as expired "
        "(safe to run any time; a session another transaction holds is left for the next run, never waited for)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Only this tenant's sessions (slug).")

    def handle(self, *args, tenant=None, **options):
        scope = None
        if tenant:
            scope = Tenant.objects.filter(slug=tenant).first()
            if scope is None:
                raise CommandError(f"No tenant with slug {tenant!r}.", returncode=2)
        count = RedemptionSession.objects.expire_due(tenant=scope)
        self.stdout.write(f"Expired {count} redemption session(s).")
