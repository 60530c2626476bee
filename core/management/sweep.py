"""Commands that run sweeps (``core.guards.sweep``): what each sweep did, and the exit code cron acts on."""

from core.management.base import GuardedCommand


class SweepCommand(GuardedCommand):
    """A command whose ``handle`` runs sweeps, reports each SweepResult, then ends with ``exit_for``."""

    def report(self, result, *, done, row):
        """Write ``<done>: <count>``, and on stderr each ``<row> #<id>`` left for the next run with its refusal."""
        self.stdout.write(f"{done}: {result.done}")
        for pk, refusal in result.skipped:
            self.stderr.write(f"{row} #{pk} left for the next run: {refusal.code}: {refusal.render()}")

    def exit_for(self, *results):
        """Exit 1 for a refusal (a row the database would not let go: look at it), else 3 when rows were
        only busy past lock_timeout or the payment provider did not answer (``retry_later``: cron runs it again
        shortly), else 0: raise the refusal that decides."""
        refusals = [refusal for result in results for _pk, refusal in result.skipped]
        refused = [refusal for refusal in refusals if not refusal.retry_later]
        if refusals:
            raise (refused or refusals)[0]
