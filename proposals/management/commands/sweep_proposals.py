from core.management.sweep import SweepCommand
from proposals.models import Proposal


class Command(SweepCommand):
    help = (
        "Reopen executed proposals whose checkout never opened and whose hold lapsed (the confirming process "
        "died), then mark pending proposals past their expiry as expired (they already read as expired). "
        "Exit 3 when rows were busy past lock_timeout: run again shortly."
    )

    def handle(self, *args, **options):
        reopened = Proposal.objects.reopen_stranded()
        self.report(reopened, done="Reopened stranded proposals", row="Proposal")
        self.stdout.write(f"Expired proposals: {Proposal.objects.expire_due()}")
        self.exit_for(reopened)
