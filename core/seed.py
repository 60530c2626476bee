"""Demo data for the core app: tenant ``demo``, an admin and an API user."""

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from core.models import Membership, Tenant

API_USERNAME = "demo-api"


class NotTheDemos(Exception):
    """Tenant ``demo``, or the user ``demo-api``, exists and is someone's real one: the seed writes nothing."""


def refuse_what_is_not_the_demos(*, admin_username):
    """Raise NotTheDemos when the seed would write into what it did not make.

    The seed adds active promo codes anyone may redeem, published packages and an API member whose token it
    prints: into a real shop whose slug is ``demo`` (on a database ``make run`` was pointed at), or through a
    real account named ``demo-api`` of another shop, that is a breach. A ``demo`` tenant whose members are all
    the seed's own users, and a ``demo-api`` user who belongs to no other tenant, are the seed's.
    """
    ours = {API_USERNAME, admin_username}
    strangers = Membership.objects.filter(tenant__slug="demo").exclude(user__username__in=ours)
    if strangers.exists():
        raise NotTheDemos("tenant 'demo' has members the demo did not add: it is a real shop")
    if Membership.objects.filter(user__username=API_USERNAME).exclude(tenant__slug="demo").exists():
        raise NotTheDemos(f"user {API_USERNAME!r} belongs to another tenant: it is a real account")


def seed_core(*, admin_username, admin_password, with_admin=True):
    """Tenant ``demo``, its API user and token, and (``with_admin``) a superuser.

    An existing user is never changed: a second ``seed_demo`` (every ``make run``) must not
    reset a password an operator chose or log anyone out. Returns (tenant, admin or None,
    api_user, token, admin_created).
    """
    User = get_user_model()
    refuse_what_is_not_the_demos(admin_username=admin_username)
    tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo Events Co."})
    admin, admin_created = None, False
    if with_admin:
        admin = User.objects.filter(username=admin_username).first()
        if admin is None:
            admin = User.objects.create_superuser(admin_username, "admin@example.com", admin_password)
            admin_created = True
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Membership.Role.OWNER})
    api_user, _ = User.objects.get_or_create(username=API_USERNAME, defaults={"email": "api@example.com"})
    Membership.objects.get_or_create(tenant=tenant, user=api_user, defaults={"role": Membership.Role.API})
    token, _ = Token.objects.get_or_create(user=api_user)
    return tenant, admin, api_user, token, admin_created
