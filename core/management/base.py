"""Commands over guarded operations: a refusal is a message and an exit code, never a traceback."""

import sys

import pghistory
from django.core.management.base import BaseCommand

from core.exceptions import DomainError
from core.guards import database_refusals

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


class GuardedCommand(BaseCommand):
    """A command whose ``handle`` calls guarded operations.

    A domain refusal prints ``<code>: <message>`` on stderr and exits 1; a lock held
    past lock_timeout (resource_locked), or a database that did not answer in time or at all
    (database_timeout, database_unavailable), exits 3, so cron can tell "run again shortly"
    from "refused".
    """

    def execute(self, *args, **options):
        command = type(self).__module__.rsplit(".", 1)[-1]
        try:
            # the history of every row this command changes names it (core/history.py)
            with database_refusals(), pghistory.context(command=command):
                return super().execute(*args, **options)
        except DomainError as refusal:
            self.stderr.write(f"{refusal.code}: {refusal.render()}")
            sys.exit(EXIT_LOCKED if refusal.retry_later else EXIT_REFUSED)
