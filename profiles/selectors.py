"""Reads of the family tree (no locks, nothing written): a profile's ancestors and descendants."""

from django.db import connection

from profiles.exceptions import ProfileNotFound
from profiles.models import Profile

MAX_TREE_DEPTH = 100


def ancestors(profile_id, *, tenant, max_depth=MAX_TREE_DEPTH):
    """Live ancestors of a profile, nearest first, each with ``depth`` (1 = parent)."""
    return _walk(profile_id, tenant=tenant, up=True, max_depth=max_depth)


def descendants(profile_id, *, tenant, max_depth=MAX_TREE_DEPTH):
    """Live descendants of a profile, nearest first, each with ``depth`` (1 = child)."""
    return _walk(profile_id, tenant=tenant, up=False, max_depth=max_depth)


def _walk(profile_id, *, tenant, up, max_depth):
    if not Profile.objects.filter(pk=profile_id, tenant=tenant).exists():
        raise ProfileNotFound()
    table = Profile._meta.db_table
    if up:
        step = (
            f"SELECT v.pid, t.depth + 1 FROM tree t JOIN {table} p ON p.id = t.id "  # noqa: S608 - the table name comes from _meta; values are parameters
            "CROSS JOIN LATERAL (VALUES (p.father_id), (p.mother_id)) AS v(pid) "
            "WHERE v.pid IS NOT NULL AND t.depth < %s"
        )
    else:
        step = (
            f"SELECT c.id, t.depth + 1 FROM tree t JOIN {table} c ON c.father_id = t.id OR c.mother_id = t.id "  # noqa: S608 - the table name comes from _meta; values are parameters
            "WHERE t.depth < %s"
        )
    sql = (
        # UNION (not ALL): a pedigree reaching one person by many paths stays bounded by people x depth.
        f"WITH RECURSIVE tree(id, depth) AS (SELECT %s::bigint, 0 UNION {step}) "  # noqa: S608 - one of the two fixed steps above; values are parameters
        "SELECT id, MIN(depth) FROM tree WHERE depth > 0 GROUP BY id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [profile_id, max_depth])
        depths = dict(cursor.fetchall())
    found = list(Profile.objects.live().filter(tenant=tenant, pk__in=depths))
    for profile in found:
        profile.depth = depths[profile.pk]
    return sorted(found, key=lambda p: (p.depth, p.pk))
