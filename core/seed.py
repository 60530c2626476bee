"""Demo data for the core app: tenant ``demo``, an admin and an API user."""

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from core.models import Membership, Tenant


def seed_core(*, admin_username, admin_password):
    User = get_user_model()
    tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo Events Co."})
    admin, _ = User.objects.get_or_create(username=admin_username, defaults={"email": "admin@example.com"})
    admin.is_staff = admin.is_superuser = admin.is_active = True
    admin.set_password(admin_password)
    admin.save()
    api_user, _ = User.objects.get_or_create(username="demo-api", defaults={"email": "api@example.com"})
    Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Membership.Role.OWNER})
    Membership.objects.get_or_create(tenant=tenant, user=api_user, defaults={"role": Membership.Role.API})
    token, _ = Token.objects.get_or_create(user=api_user)
    return tenant, admin, api_user, token
