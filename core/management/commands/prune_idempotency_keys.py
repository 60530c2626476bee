from django.core.management.base import BaseCommand

from core.models import IdempotencyKey


class Command(BaseCommand):
    help = "Delete expired Idempotency-Key records (run it from cron, e.g. hourly)."

    def handle(self, *args, **options):
        deleted = IdempotencyKey.objects.prune()
        self.stdout.write(f"Deleted {deleted} expired idempotency key(s).")
