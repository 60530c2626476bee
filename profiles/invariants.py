"""What must hold for family trees, recomputed from the rows (manage.py check_invariants)."""

from django.db import connection
from django.db.models import Count, F, Q

from core.invariants import invariant
from profiles.models import Profile, ProfileAuditLog


def _scoped(queryset, tenant):
    return queryset.filter(tenant=tenant) if tenant is not None else queryset


@invariant("no live profile points at a deleted parent; a father is male, a mother female, both in its tenant")
def parents_are_valid(tenant):
    broken = _scoped(Profile.objects.filter(deleted_at__isnull=True), tenant).filter(
        Q(father__deleted_at__isnull=False)
        | Q(mother__deleted_at__isnull=False)
        | Q(father__isnull=False) & ~Q(father__sex=Profile.Sex.MALE)
        | Q(mother__isnull=False) & ~Q(mother__sex=Profile.Sex.FEMALE)
        | Q(father__isnull=False) & ~Q(father__tenant_id=F("tenant_id"))
        | Q(mother__isnull=False) & ~Q(mother__tenant_id=F("tenant_id"))
    )
    return [f"profile {pk}" for pk in broken.values_list("pk", flat=True)]


@invariant("no profile is its own ancestor (the father/mother graph has no cycle)")
def no_cycles(tenant):
    table = Profile._meta.db_table
    tenant_filter = "WHERE tenant_id = %s" if tenant is not None else ""
    sql = f"""
        WITH RECURSIVE walk(start, id, depth) AS (
            SELECT id, id, 0 FROM {table} {tenant_filter}
            UNION ALL
            SELECT walk.start, parent.pid, walk.depth + 1
            FROM walk JOIN {table} p ON p.id = walk.id
            CROSS JOIN LATERAL (VALUES (p.father_id), (p.mother_id)) AS parent(pid)
            WHERE parent.pid IS NOT NULL AND walk.depth < 64 AND (walk.depth = 0 OR walk.id <> walk.start)
        )
        SELECT DISTINCT start FROM walk WHERE depth > 0 AND id = start
    """  # noqa: S608 - the table name from _meta and a fixed filter; the tenant is a parameter
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant.pk] if tenant is not None else [])
        return [f"profile {row[0]} is its own ancestor" for row in cursor.fetchall()]


@invariant(
    "an audit entry is undone exactly when it links its undo entry, which is an undo of the same profile; "
    "every undo entry undid exactly one entry"
)
def undo_links_are_consistent(tenant):
    entries = _scoped(ProfileAuditLog.objects.all(), tenant)
    broken = entries.filter(
        Q(undone_at__isnull=True, undo_entry__isnull=False)
        | Q(undone_at__isnull=False, undo_entry__isnull=True)
        | Q(undo_entry__isnull=False) & ~Q(undo_entry__action=ProfileAuditLog.Action.UNDO)
        | Q(undo_entry__isnull=False) & ~Q(undo_entry__profile_id=F("profile_id"))
        | Q(action=ProfileAuditLog.Action.UNDO, undoes__isnull=True)  # an undo that undid nothing
    )
    return [f"audit entry {pk}" for pk in broken.values_list("pk", flat=True)]


@invariant(
    "a profile has exactly one create entry, and its version is 1 + the number of its other audit entries "
    "(every change is audited: update, delete, restore and undo each bump the version by one)"
)
def versions_match_the_audit_log(tenant):
    profiles = _scoped(Profile.objects.all(), tenant)
    creates = Count("history", filter=Q(history__action=ProfileAuditLog.Action.CREATE))
    broken = profiles.annotate(creates=creates, changes=Count("history") - creates).exclude(
        creates=1, version=F("changes") + 1
    )
    return [
        f"profile {pk}: version {version}, {creates} create and {changes} other entries"
        for pk, version, creates, changes in broken.values_list("pk", "version", "creates", "changes")
    ]
