"""Scenario: operators undoing the same audit entry at once (target t: entry first_id + t)."""

from django.db.models import F
from django.db.models.functions import Now

from core.race_demo import Scenario, scenario
from profiles.exceptions import AlreadyUndone, AuditEntryNotFound, StaleVersion
from profiles.models import Profile, ProfileAuditLog


def column(field):
    """The column an audit entry's field key names (``father`` -> ``father_id``)."""
    return Profile._meta.get_field(field).attname


@scenario
class ProfileUndo(Scenario):
    """``ProfileAuditLog.objects.undo``: entry first_id + t, an update of its profile."""

    name = "profile undo"
    attempts = 20
    expected_winners = 1
    backstops = ("profiles.ProfileAuditLog:audit_append_only_transition",)
    REASON = "race"

    def create_target(self):
        """A child moved from one father to another: its ``update`` entry is target 0."""
        create = Profile.objects.create_profile
        first = create(tenant=self.tenant, first_name="Omar", last_name="Race", sex="male")
        second = create(tenant=self.tenant, first_name="Yusuf", last_name="Race", sex="male")
        child = create(tenant=self.tenant, first_name="Lina", last_name="Race", sex="female", father=first)
        Profile.objects.update_profile(child.pk, tenant=self.tenant, version=child.version, father=second)
        entry = ProfileAuditLog.objects.filter(profile=child, action=ProfileAuditLog.Action.UPDATE).latest("pk")
        self.first_id = entry.pk
        return entry

    def prepare(self):
        self.create_target()

    def guarded(self, t, k):
        return ProfileAuditLog.objects.undo(self.first_id + t, tenant=self.tenant, actor=self.actor, reason=self.REASON)

    def check_then_act(self, t, k):
        entry = ProfileAuditLog.objects.filter(pk=self.first_id + t, tenant=self.tenant).first()
        if entry is None:
            raise AuditEntryNotFound()
        if entry.undone_at is not None:
            raise AlreadyUndone()
        profile = Profile.objects.get(pk=entry.profile_id)
        stale = [field for field, value in entry.new_data.items() if getattr(profile, column(field)) != value]
        if stale:
            raise StaleVersion(fields=stale)
        self.pause()
        Profile.objects.filter(pk=profile.pk).update(
            **{column(field): value for field, value in entry.old_data.items()}, version=F("version") + 1
        )
        undo = ProfileAuditLog.objects.create(
            tenant=self.tenant,
            profile=profile,
            action=ProfileAuditLog.Action.UNDO,
            old_data=entry.new_data,
            new_data=entry.old_data,
            actor=self.actor,
        )
        ProfileAuditLog.objects.filter(pk=entry.pk).update(
            undone_at=Now(), undone_by=self.actor, undo_reason=self.REASON, undo_entry=undo
        )
        return undo
