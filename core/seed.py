"""Demo data for the core app: tenant ``demo``, an admin and an API user."""

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from core.models import Membership, Tenant

# What the seed makes, and how it knows its own again.
DEMO_NAME, API_USERNAME, API_EMAIL = "Demo Events Co.", "demo-api", "api@example.com"


class NotTheDemos(Exception):
    """Tenant ``demo``, or the user ``demo-api``, exists and is someone's real one: the seed writes nothing."""


def refuse_what_is_not_the_demos(*, admin_username, with_admin):
    """Raise NotTheDemos when the seed would write into what it did not make.

    The seed adds active promo codes anyone may redeem, published packages and an API member whose token it
    prints: into a real shop whose slug is ``demo`` (on a database ``make run`` was pointed at), or through a
    real account named ``demo-api``, that is a breach. The seed's own ``demo`` tenant has the seed's name and
    no member the seed did not add (``demo-api``, and the admin when it makes one); its ``demo-api`` user has the
    seed's e-mail and no other tenant.
    """
    ours = {API_USERNAME, admin_username} if with_admin else {API_USERNAME}
    shop = Tenant.objects.filter(slug="demo").first()
    if shop is not None and (shop.name != DEMO_NAME or shop.memberships.exclude(user__username__in=ours).exists()):
        raise NotTheDemos("tenant 'demo' is not the demo's (its name, or members the demo did not add): a real shop")
    api_user = get_user_model().objects.filter(username=API_USERNAME).first()
    if api_user is not None and (
        api_user.email != API_EMAIL or api_user.memberships.exclude(tenant__slug="demo").exists()
    ):
        raise NotTheDemos(f"user {API_USERNAME!r} is not the demo's (its e-mail, or another tenant): a real account")


def seed_core(*, admin_username, admin_password, with_admin=True):
    """Tenant ``demo``, its API user and token, and (``with_admin``) a superuser.

    An existing user is never changed: a second ``seed_demo`` (every ``make run``) must not
    reset a password an operator chose or log anyone out. Returns (tenant, admin or None,
    api_user, token, admin_created).
    """
    User = get_user_model()
    refuse_what_is_not_the_demos(admin_username=admin_username, with_admin=with_admin)
    tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": DEMO_NAME})
    admin, admin_created = None, False
    if with_admin:
        admin = User.objects.filter(username=admin_username).first()
        if admin is None:
            admin = User.objects.create_superuser(admin_username, "admin@example.com", admin_password)
            admin_created = True
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": Membership.Role.OWNER})
    api_user, _ = User.objects.get_or_create(username=API_USERNAME, defaults={"email": API_EMAIL})
    Membership.objects.get_or_create(tenant=tenant, user=api_user, defaults={"role": Membership.Role.API})
    token, _ = Token.objects.get_or_create(user=api_user)
    return tenant, admin, api_user, token, admin_created
