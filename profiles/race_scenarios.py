"""race_demo: twenty operators undo the same audit entry at once."""

import pgtrigger
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from core.race_demo import naive_pause, scenario
from profiles.exceptions import AlreadyUndone
from profiles.models import Profile, ProfileAuditLog


@scenario
class ProfileUndo:
    name = "profile undo"
    attempts = 20
    expected_winners = 1

    def __init__(self, tenant):
        self.tenant = tenant
        first = Profile.objects.create_profile(tenant=tenant, first_name="Omar", last_name="Race", sex="male")
        second = Profile.objects.create_profile(tenant=tenant, first_name="Yusuf", last_name="Race", sex="male")
        child = Profile.objects.create_profile(
            tenant=tenant, first_name="Lina", last_name="Race", sex="female", father=first
        )
        Profile.objects.update_profile(child.pk, tenant=tenant, version=child.version, father=second)
        self.entry = ProfileAuditLog.objects.filter(profile=child, action=ProfileAuditLog.Action.UPDATE).latest("pk")

    def guarded(self, i):
        return ProfileAuditLog.objects.undo(self.entry.pk, tenant=self.tenant, actor=None, reason=f"race demo {i}")

    def naive(self, i):
        # The database's append-only trigger would refuse marking the entry undone twice:
        # switched off for this connection, to show what the check-then-act alone does.
        with pgtrigger.ignore("profiles.ProfileAuditLog:audit_append_only_transition"):
            return self._naive(i)

    def _naive(self, i):
        entry = ProfileAuditLog.objects.get(pk=self.entry.pk)
        if entry.undone_at is not None:
            raise AlreadyUndone()
        naive_pause()
        with transaction.atomic():
            Profile.objects.filter(pk=entry.profile_id).update(
                father_id=entry.old_data.get("father"), version=F("version") + 1
            )
            undo = ProfileAuditLog.objects.create(
                tenant=self.tenant,
                profile_id=entry.profile_id,
                action=ProfileAuditLog.Action.UNDO,
                old_data=entry.new_data,
                new_data=entry.old_data,
            )
            ProfileAuditLog.objects.filter(pk=entry.pk).update(undone_at=Now(), undo_entry=undo)
        return undo
