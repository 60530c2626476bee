from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Deprecated: run sweep_proposals, which this calls (the sweep also reopens stranded proposals, "
        "which this name did not say). Same output and exit codes."
    )

    def handle(self, *args, **options):
        self.stderr.write("expire_proposals is deprecated: run sweep_proposals (the same sweep).")
        call_command("sweep_proposals", stdout=self.stdout, stderr=self.stderr)
