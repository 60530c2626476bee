import uuid

from django.core.management.base import BaseCommand, CommandError

from core.models import Tenant
from core.race_demo import leftover_throwaway_databases, run_storm, sandbox_payments, scenarios, throwaway_database


class Command(BaseCommand):
    help = (
        "Fire a storm of concurrent attempts at each guarded operation, in a throwaway database created, "
        "migrated and dropped for the run (the current one is never written), and print attempts, winners, "
        "refusals by code and whether every invariant held. --naive runs the check-then-act controls "
        "instead, to show what breaks without the guards."
    )

    def add_arguments(self, parser):
        parser.add_argument("--naive", action="store_true", help="run the unguarded check-then-act controls")
        parser.add_argument("--only", help="run only scenarios whose name contains this text")

    def handle(self, *args, **options):
        run = uuid.uuid4().hex[:8]
        mode = "NAIVE check-then-act (no guards)" if options["naive"] else "Lockstep guards"
        for leftover in leftover_throwaway_databases():
            self.stderr.write(
                f"Note: {leftover} is another run's throwaway database: one going on now, or one killed before it "
                f'could drop it (then: DROP DATABASE "{leftover}" WITH (FORCE)).'
            )
        with throwaway_database(run) as database, sandbox_payments():
            self.stdout.write(f"Race demo: {mode}, in the throwaway database {database} (dropped after)\n")
            self.storms(run, options)

    def storms(self, run, options):
        header = f"{'operation':<22} {'attempts':>8} {'winners':>8} {'expected':>8}  {'invariants':<10}  refusals"
        self.stdout.write(header)
        self.stdout.write("-" * len(header))
        results = []
        for scenario_class in scenarios():
            if options["only"] and options["only"] not in scenario_class.name:
                continue
            # One tenant per scenario, so each invariant check sees only its own storm.
            tenant = Tenant.objects.create(
                slug=f"race-demo-{run}-{len(results) + 1}", name=f"Race demo: {scenario_class.name}"
            )
            result = run_storm(scenario_class, tenant, naive=options["naive"])
            results.append(result)
            refusals = ", ".join(f"{code} ×{n}" for code, n in sorted(result.refusals.items())) or "-"
            held = "held" if result.invariants_held else "BROKEN"
            line = (
                f"{result.name:<22} {result.attempts:>8} {result.winners:>8} {result.expected_winners:>8}  "
                f"{held:<10}  {refusals}"
            )
            self.stdout.write(line if result.exact else self.style.ERROR(line))
            for broken in result.broken:
                self.stdout.write(self.style.ERROR(f"{'':<24}broken: {broken}"))
        if not results:
            raise CommandError("no scenario matched", returncode=2)
        anomalies = [r.name for r in results if not r.exact]
        self.stdout.write("")
        if anomalies:
            self.stdout.write(self.style.ERROR(f"Anomalies in: {', '.join(anomalies)}"))
            if not options["naive"]:
                raise CommandError("a guarded operation misbehaved", returncode=1)
        else:
            self.stdout.write(self.style.SUCCESS("Every guarded operation had exactly the expected winners."))
