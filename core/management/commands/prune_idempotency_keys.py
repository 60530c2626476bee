from core.management.base import GuardedCommand
from core.models import IdempotencyKey, ThrottleBucket


class Command(GuardedCommand):
    help = (
        "Delete expired Idempotency-Key records and lapsed rate-limit buckets (a bucket whose time has "
        "passed counts as full anyway). Run it from cron, e.g. hourly."
    )

    def handle(self, *args, **options):
        deleted = IdempotencyKey.objects.prune()
        self.stdout.write(f"Deleted {deleted} expired idempotency key(s).")
        lapsed = ThrottleBucket.objects.prune()
        self.stdout.write(f"Deleted {lapsed} lapsed rate-limit bucket(s).")
