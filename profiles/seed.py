"""Demo data for this app, called by ``manage.py seed_demo`` inside its transaction. Must be idempotent."""

from datetime import date

from profiles.models import Profile, ProfileAuditLog

FAMILY = [
    # key, first, last, sex, born, died, father key, mother key
    ("ibrahim", "Ibrahim", "Al-Qefari", "male", date(1931, 3, 2), date(2004, 11, 20), None, None),
    ("aisha", "Aisha", "Al-Saud", "female", date(1936, 7, 14), None, None, None),
    ("khalid", "Khalid", "Al-Qefari", "male", date(1958, 1, 9), None, "ibrahim", "aisha"),
    ("noura", "Noura", "Al-Qefari", "female", date(1961, 5, 30), None, "ibrahim", "aisha"),
    ("maha", "Maha", "Al-Harbi", "female", date(1962, 9, 3), None, None, None),
    ("faisal", "Faisal", "Al-Qefari", "male", date(1985, 2, 17), None, "khalid", "maha"),
    ("sara", "Sara", "Al-Qefari", "female", date(1988, 12, 1), None, "khalid", "maha"),
]


def seed_demo(tenant, *, admin, api_user):
    """A three-generation family with some history (an update, and an undone update)."""
    if Profile.objects.filter(tenant=tenant).exists():
        return
    made = {}
    for key, first, last, sex, born, died, father, mother in FAMILY:
        made[key] = Profile.objects.create_profile(
            tenant=tenant,
            actor=admin,
            first_name=first,
            last_name=last,
            sex=sex,
            birth_date=born,
            death_date=died,
            father=made.get(father),
            mother=made.get(mother),
        )
    sara = made["sara"]
    Profile.objects.update_profile(sara.pk, tenant=tenant, version=sara.version, actor=api_user, last_name="Qefari")
    faisal = made["faisal"]
    faisal = Profile.objects.update_profile(
        faisal.pk, tenant=tenant, version=faisal.version, actor=api_user, birth_date=date(1985, 2, 18)
    )
    entry = faisal.history.order_by("-id").first()
    ProfileAuditLog.objects.undo(entry.pk, tenant=tenant, actor=admin, reason="Birth date was right before")
