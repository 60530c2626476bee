import json

from django.utils.translation import gettext as _

from core.management.base import GuardedCommand
from profiles.management.commands._language import (
    EXIT_REFUSED,
    add_language_argument,
    chosen_language,
    fail,
    override,
)
from profiles.models import Profile, ProfileAuditLog


class Command(GuardedCommand):
    help = "Print the audit history of a profile, or one audit entry with --entry. Exit 1 if not found."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("profile_id", nargs="?", type=int, help="id of the profile")
        target.add_argument("--entry", type=int, help="id of one audit entry")
        add_language_argument(parser)

    def handle(self, *args, **options):
        with override(chosen_language(options)):
            if options["entry"] is not None:
                entries = ProfileAuditLog.objects.filter(pk=options["entry"])
                missing = _("Audit entry not found.")
            else:
                if not Profile.objects.filter(pk=options["profile_id"]).exists():
                    fail(self, _("Profile not found."), EXIT_REFUSED)
                entries = ProfileAuditLog.objects.filter(profile_id=options["profile_id"])
                missing = None
            entries = list(entries.select_related("actor", "undone_by", "profile").order_by("id"))
            if not entries and missing:
                fail(self, missing, EXIT_REFUSED)
            for entry in entries:
                self.stdout.write(self._line(entry))

    def _line(self, entry):
        line = (
            f"#{entry.pk} {entry.created_at:%Y-%m-%d %H:%M:%S} {entry.action:<7} "
            f"profile={entry.profile_id} ({entry.profile}) actor={entry.actor or '-'} "
            f"old={json.dumps(entry.old_data, ensure_ascii=False, sort_keys=True)} "
            f"new={json.dumps(entry.new_data, ensure_ascii=False, sort_keys=True)}"
        )
        if entry.undone_at:
            line += " " + _("undone at %(when)s by %(who)s: %(reason)s") % {
                "when": f"{entry.undone_at:%Y-%m-%d %H:%M:%S}",
                "who": entry.undone_by or "-",
                "reason": entry.undo_reason,
            }
        return line
