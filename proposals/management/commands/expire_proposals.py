from core.exceptions import LockContended
from core.management.base import GuardedCommand
from proposals.models import Proposal


class Command(GuardedCommand):
    help = (
        "Reopen executed proposals whose checkout never opened and whose hold lapsed (the confirming process "
        "died), then mark pending proposals past their expiry as expired (they already read as expired). "
        "Exit 3 when rows were busy past lock_timeout: run again shortly."
    )

    def handle(self, *args, **options):
        reopened = Proposal.objects.reopen_stranded()
        self.stdout.write(f"Reopened stranded proposals: {reopened.done}")
        for proposal_id, refusal in reopened.skipped:
            self.stderr.write(f"Proposal #{proposal_id} left for the next run: {refusal.code}: {refusal.render()}")
        self.stdout.write(f"Expired proposals: {Proposal.objects.expire_due()}")
        # Exit 1 for a refusal (a row the database would not let go: look at it), else 3 when rows
        # were only busy (cron runs it again shortly), else 0.
        refusals = [refusal for _pk, refusal in reopened.skipped]
        refused = [refusal for refusal in refusals if not isinstance(refusal, LockContended)]
        if refused or refusals:
            raise (refused or refusals)[0]
