"""seed_demo (run by every `make run`): idempotent, never touches an existing user's password."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command


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
