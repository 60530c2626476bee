"""Demo data for the core app: tenant ``demo``, an admin and an API user."""

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from core.models import Membership, Tenant


def seed_core(*, admin_username, admin_password, with_admin=True):
    """Tenant ``demo``, its API user and token, and (``with_admin``) a superuser.

    An existing user is never changed: a second ``seed_demo`` (every ``make run``) must not
    reset a password an operator chose or log anyone out. Returns (tenant, admin or None,
    api_user, token, admin_created).
    """
    User = get_user_model()
    tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo Events Co."})
    admin, admin_created = None, False
    if with_admin:
        admin = User.objects.filter(username=admin_username).first()
        if admin is None:
            admin = User.objects.create_superuser(admin_username, "admin@example.com", admin_password)
            admin_created = True
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Membership.Role.OWNER})
    api_user, _ = User.objects.get_or_create(username="demo-api", defaults={"email": "api@example.com"})
    Membership.objects.get_or_create(tenant=tenant, user=api_user, defaults={"role": Membership.Role.API})
    token, _ = Token.objects.get_or_create(user=api_user)
    return tenant, admin, api_user, token, admin_created
