from django.core.management.base import BaseCommand

from proposals.models import Proposal


class Command(BaseCommand):
    help = "Mark pending proposals past their expiry as expired (they already read as expired before this)."

    def handle(self, *args, **options):
        self.stdout.write(f"Expired proposals: {Proposal.objects.expire_due()}")
