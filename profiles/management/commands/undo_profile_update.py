from profiles.management.commands.undo_audit_entry import Command as UndoAuditEntry


class Command(UndoAuditEntry):
    help = "Deprecated: run undo_audit_entry, which this is (it undoes any audit entry, not only updates). " + (
        UndoAuditEntry.help
    )

    def handle(self, *args, **options):
        self.stderr.write("undo_profile_update is deprecated: run undo_audit_entry (the same command).")
        return super().handle(*args, **options)
