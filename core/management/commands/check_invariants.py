from django.core.management.base import BaseCommand, CommandError

from core.invariants import run_checks
from core.models import Tenant


class Command(BaseCommand):
    help = (
        "Recompute every counter and rule from the rows (promo usage counts, date capacity, executed "
        "proposals, live children of deleted parents, family-tree cycles). Exit 1 on any drift."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="only this tenant's rows (slug)")

    def handle(self, *args, **options):
        tenant = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"unknown tenant {options['tenant']!r}", returncode=2)
        results = run_checks(tenant)
        for result in results:
            mark = self.style.SUCCESS("ok  ") if result.ok else self.style.ERROR("FAIL")
            self.stdout.write(f"{mark} {result.app:<10} {result.description}")
            for violation in result.violations[:20]:
                self.stdout.write(f"       {violation}")
            if len(result.violations) > 20:
                self.stdout.write(f"       … and {len(result.violations) - 20} more")
        broken = sum(not result.ok for result in results)
        if broken:
            raise CommandError(f"{broken} invariant(s) broken", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"All {len(results)} invariants hold."))
