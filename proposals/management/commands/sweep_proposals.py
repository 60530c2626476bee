from core.management.sweep import SweepCommand
from proposals.models import Proposal


class Command(SweepCommand):
    help = (
        "Reopen executed proposals whose checkout never opened and whose hold lapsed (the confirming process "
        "died), then mark pending proposals past their expiry as expired (they already read as expired; one "
        "another transaction holds is left for the next run). Exit 3 when a reopen found its rows busy past "
        "lock_timeout: run again shortly."
    )

    def handle(self, *args, **options):
        reopened = Proposal.objects.reopen_stranded()
        self.report(reopened, done="Reopened stranded proposals", row="Proposal")
        expired = Proposal.objects.expire_due()  # rows another transaction holds are skipped: the next run's
        self.stdout.write(f"Expired proposals: {expired}")
        self.exit_for(reopened)  # a refusal from the reopens decides (exit 1), busy rows exit 3
