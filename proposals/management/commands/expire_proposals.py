from django.core.management.base import BaseCommand

from proposals.models import Proposal


class Command(BaseCommand):
    help = ("Reopen executed proposals whose checkout never opened and whose hold lapsed (the confirming process "
            "died), then mark pending proposals past their expiry as expired (they already read as expired).")

    def handle(self, *args, **options):
        self.stdout.write(f"Reopened stranded proposals: {Proposal.objects.reopen_stranded()}")
        self.stdout.write(f"Expired proposals: {Proposal.objects.expire_due()}")
