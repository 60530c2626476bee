import factory

from profiles.models import Profile
from tests.factories import TenantFactory


class ProfileFactory(factory.django.DjangoModelFactory):
    """Profiles made through the manager, so each one has its ``create`` audit entry."""

    class Meta:
        model = Profile

    tenant = factory.SubFactory(TenantFactory)
    first_name = factory.Sequence(lambda n: f"Person{n}")
    last_name = "Family"
    sex = Profile.Sex.MALE

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return model_class.objects.create_profile(**kwargs)


def family(tenant):
    """grandpa + grandma -> dad (+ mum) -> kid; returns a dict of fresh rows."""
    grandpa = ProfileFactory(tenant=tenant, first_name="Grandpa")
    grandma = ProfileFactory(tenant=tenant, first_name="Grandma", sex="female")
    dad = ProfileFactory(tenant=tenant, first_name="Dad", father=grandpa, mother=grandma)
    mum = ProfileFactory(tenant=tenant, first_name="Mum", sex="female")
    kid = ProfileFactory(tenant=tenant, first_name="Kid", father=dad, mother=mum)
    return {"grandpa": grandpa, "grandma": grandma, "dad": dad, "mum": mum, "kid": kid}


def fresh(profile):
    return Profile.objects.get(pk=profile.pk)


def form_data(profile, **changes):
    """The admin change form's POST for ``profile``, opened at its version unless ``expected_version`` is given."""
    return {
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "sex": profile.sex,
        "birth_date": "",
        "death_date": "",
        "father": profile.father_id or "",
        "mother": profile.mother_id or "",
        "expected_version": profile.version,
        "history-TOTAL_FORMS": "0",
        "history-INITIAL_FORMS": "0",
        "history-MIN_NUM_FORMS": "0",
        "history-MAX_NUM_FORMS": "0",
        **changes,
    }
