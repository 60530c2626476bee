from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils.translation import gettext as _

from core.exceptions import DomainError
from core.management.base import GuardedCommand
from profiles.exceptions import UndoReasonRequired, UndoReasonTooLong
from profiles.management.commands._language import (
    EXIT_LOCKED,
    EXIT_REFUSED,
    EXIT_USAGE,
    add_language_argument,
    chosen_language,
    fail,
    is_text,
    override,
)
from profiles.models import ProfileAuditLog


class Command(GuardedCommand):
    help = (
        "Undo one audit entry of the family tree, whatever its action "
        "(an update, a move to another parent, a delete or a restore). "
        "Exit 0 on success, 1 when refused (message on stderr), 2 on bad usage, "
        "3 when a lock it needs is held by another transaction (run it again shortly)."
    )

    def add_arguments(self, parser):
        parser.add_argument("audit_id", help="id of the audit entry to undo")
        parser.add_argument("--reason", required=True, help="why the change is undone (stored on the entry)")
        parser.add_argument("--actor", help="username recorded as the one who undid it")
        add_language_argument(parser)

    def handle(self, *args, **options):
        with override(chosen_language(options)):
            self._undo(options)

    def _undo(self, options):
        try:
            entry_id = int(options["audit_id"])
        except ValueError:
            fail(self, _("The audit entry id must be a whole number."), EXIT_USAGE)
        if not 1 <= entry_id < 2**63:
            fail(self, _("The audit entry id must be a whole number."), EXIT_USAGE)
        for option in ("reason", "actor"):
            if options[option] is not None and not is_text(options[option]):
                fail(self, _("--%(option)s must be UTF-8 text.") % {"option": option}, EXIT_USAGE)
        # The shell operator is trusted across tenants: the entry names its own tenant. An unknown
        # entry gives tenant None, which matches nothing: the manager answers audit_entry_not_found
        # (after its own usage check of the reason).
        tenant_id = ProfileAuditLog.objects.filter(pk=entry_id).values_list("tenant_id", flat=True).first()
        actor = None
        if options["actor"]:
            users = get_user_model().objects.filter(username=options["actor"])
            if tenant_id is not None:  # credited to one of the entry's shop (or the platform's): its history shows it
                users = users.filter(Q(memberships__tenant_id=tenant_id) | Q(is_superuser=True)).distinct()
            actor = users.first()
            if actor is None:
                fail(
                    self,
                    _("No user named %(username)s among the members of the entry's tenant.")
                    % {"username": options["actor"]},
                    EXIT_USAGE,
                )
        try:
            entry = ProfileAuditLog.objects.undo(entry_id, tenant=tenant_id, actor=actor, reason=options["reason"])
        except (UndoReasonRequired, UndoReasonTooLong) as exc:  # bad usage, not a refusal by the data
            fail(self, f"{exc.code}: {exc.render()}", EXIT_USAGE)
        except DomainError as exc:  # retry_later: a lock held elsewhere, a database that did not answer
            fail(self, f"{exc.code}: {exc.render()}", EXIT_LOCKED if exc.retry_later else EXIT_REFUSED)
        self.stdout.write(
            _(
                "Undone entry %(entry)s (%(action)s of profile %(profile)s); "
                "undo entry %(undo)s, profile version %(version)s."
            )
            % {
                "entry": entry.pk,
                "action": entry.get_action_display(),
                "profile": entry.profile_id,
                "undo": entry.undo_entry.pk,
                "version": entry.profile.version,
            }
        )
