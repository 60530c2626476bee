"""seed_demo (run by every `make run`): idempotent, never touches an existing user's password."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command


def seed(*args):
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_on_the_embedded_database_the_demo_admin_is_created_once_and_never_reset(settings):
    settings.EMBEDDED_DATABASE = True
    assert "Admin login: admin / lockstep-demo" in seed()
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("lockstep-demo")
    admin.set_password("chosen-by-the-operator")
    admin.save()
    again = seed()
    assert "Admin login: admin / (existing user: password unchanged)" in again
    assert "API token: " in again
    assert get_user_model().objects.get(username="admin").check_password("chosen-by-the-operator")


@pytest.mark.django_db
def test_on_your_own_database_no_demo_admin_unless_asked(settings):
    settings.EMBEDDED_DATABASE = False
    assert "Admin login: none created" in seed()
    assert not get_user_model().objects.filter(username="admin").exists()
    assert "Admin login: admin / lockstep-demo" in seed("--with-admin")


@pytest.mark.django_db
def test_a_real_shop_called_demo_or_a_real_demo_api_account_is_never_seeded_into(settings):
    """Regression: every ``make run`` seeds, on whatever database it points at. A real shop whose slug is
    ``demo`` got active codes anyone could redeem, published packages, and an API member whose token the
    seed printed; a real ``demo-api`` account of another shop became that member."""
    from core.models import Membership, Tenant
    from promos.models import PromoCode
    from tests.factories import MembershipFactory, TenantFactory, UserFactory

    settings.EMBEDDED_DATABASE = False
    shop = TenantFactory(slug="demo", name="A real shop")
    with pytest.raises(CommandError) as refused:  # no member yet, but not the demo's name
        seed()
    assert refused.value.returncode == 1 and "real shop" in str(refused.value)
    Tenant.objects.filter(pk=shop.pk).update(name="Demo Events Co.")
    MembershipFactory(tenant=shop, user=UserFactory(username="admin"), role="owner")  # its owner, named admin
    with pytest.raises(CommandError) as refused:  # the seed makes no admin here: not one of its users
        seed()
    assert "real shop" in str(refused.value)
    assert not PromoCode.objects.filter(tenant=shop).exists()
    assert list(Membership.objects.filter(tenant=shop).values_list("user__username", flat=True)) == ["admin"]

    Tenant.objects.filter(pk=shop.pk).update(slug="a-real-shop")
    staff = UserFactory(username="demo-api", email="ops@shop.example")  # a real account, in no tenant
    with pytest.raises(CommandError) as refused:
        seed()
    assert "real account" in str(refused.value) and not Tenant.objects.filter(slug="demo").exists()
    staff.email = "api@example.com"
    staff.save()
    MembershipFactory(tenant=TenantFactory(), user=staff, role="api")  # the seed's e-mail, another shop's member
    with pytest.raises(CommandError) as refused:
        seed()
    assert "real account" in str(refused.value) and not Tenant.objects.filter(slug="demo").exists()


@pytest.mark.django_db
def test_the_seeds_own_demo_is_seeded_again(settings):
    settings.EMBEDDED_DATABASE = True
    first, again = seed(), seed()
    assert "Tenant: demo" in first and "Tenant: demo" in again
