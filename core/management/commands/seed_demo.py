from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.discovery import project_modules
from core.seed import NotTheDemos, seed_core


class Command(BaseCommand):
    help = (
        "Create (or refresh) tenant 'demo' with demo data, an API token and, on the embedded database (or with "
        "--with-admin), a demo superuser. Idempotent; never changes an existing user's password. Refuses, "
        "writing nothing, a tenant 'demo' with members it did not add or a user 'demo-api' of another tenant "
        "(a real shop, a real account)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument("--admin-password", default=getattr(settings, "DEMO_ADMIN_PASSWORD", "lockstep-demo"))
        admin = parser.add_mutually_exclusive_group()
        admin.add_argument(
            "--with-admin",
            dest="with_admin",
            action="store_true",
            default=None,
            help="create the demo superuser even on your own database (DATABASE_URL)",
        )
        admin.add_argument(
            "--without-admin", dest="with_admin", action="store_false", help="never create the demo superuser"
        )

    def handle(self, *args, **options):
        # A well-known login belongs to the private embedded database only, unless asked for.
        with_admin = settings.EMBEDDED_DATABASE if options["with_admin"] is None else options["with_admin"]
        with transaction.atomic():
            try:
                tenant, admin, api_user, token, admin_created = seed_core(
                    admin_username=options["admin_username"],
                    admin_password=options["admin_password"],
                    with_admin=with_admin,
                )
            except NotTheDemos as refusal:
                raise CommandError(f"Nothing written: {refusal}.", returncode=1) from None
            for _app, seed in project_modules("seed"):  # INSTALLED_APPS order: packages before proposals
                if hasattr(seed, "seed_demo"):  # core.seed builds the tenant and users above
                    seed.seed_demo(tenant, admin=admin, api_user=api_user)
        self.stdout.write(f"Tenant: {tenant.slug}")
        if admin is None:
            self.stdout.write("Admin login: none created (use --with-admin, or manage.py createsuperuser)")
        elif admin_created:
            self.stdout.write(f"Admin login: {admin.username} / {options['admin_password']}")
        else:
            self.stdout.write(f"Admin login: {admin.username} / (existing user: password unchanged)")
        self.stdout.write(f"API token: {token.key}")
