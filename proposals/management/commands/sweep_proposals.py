from core.exceptions import LockContended
from core.guards import SweepResult
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
        expired = SweepResult()
        try:
            expired.done = Proposal.objects.expire_due()
        except LockContended as busy:  # one busy lapsed proposal holds the single UPDATE: all left for the next run
            expired.skipped.append((None, busy))
        self.stdout.write(f"Expired proposals: {expired.done}")
        self.exit_for(reopened, expired)  # a refusal from the reopens still decides (exit 1), busy rows exit 3
