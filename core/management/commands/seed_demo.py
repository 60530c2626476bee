from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from core.seed import seed_core

DOMAIN_SEEDS = ["bookings", "proposals", "promos", "profiles"]


class Command(BaseCommand):
    help = "Create (or refresh) tenant 'demo' with demo data, an admin and an API token. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument("--admin-password", default=getattr(settings, "DEMO_ADMIN_PASSWORD", "lockstep-demo"))

    def handle(self, *args, **options):
        with transaction.atomic():
            tenant, admin, api_user, token = seed_core(
                admin_username=options["admin_username"], admin_password=options["admin_password"]
            )
            for app in DOMAIN_SEEDS:
                seed = import_module(f"{app}.seed")
                seed.seed_demo(tenant, admin=admin, api_user=api_user)
        self.stdout.write(f"Tenant: {tenant.slug}")
        self.stdout.write(f"Admin login: {admin.username} / {options['admin_password']}")
        self.stdout.write(f"API token: {token.key}")
