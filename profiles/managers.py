"""Guarded operations on family-tree profiles and their audit log (tier 1, see STYLE.md).

Every write is one guarded operation (``core.guards``: ``@guarded`` via ``guarded_steps``)
that opens its ``transaction.atomic``, locks what it reads, re-validates, writes the
profile, bumps ``version`` and inserts its ``ProfileAuditLog`` entry. So a profile's
version is always 1 + the number of its audit entries after ``create`` (an invariant).
The database backs the locks up (triggers in profiles/models.py): entries are
append-only, versions only increase, a live row never takes a deleted parent and a
profile with live children is never deleted; plain ``save()`` cannot write the guarded
columns (``GuardedModel``).

Global lock order (each operation takes a subset, always in this order):

1. advisory ``AUDIT_UNDO:<tenant>:<entry>``   undo only; try-lock, busy -> operation_locked
2. the audit entry row, FOR UPDATE NOWAIT     undo only; busy -> operation_locked
3. advisory ``PROFILE_TREE:<tenant id>``      only when a write sets a non-null father/mother;
                                              waits at most lock_timeout -> resource_locked
4. the subject profile row, FOR UPDATE NOWAIT busy -> resource_locked
5. the parent rows it (re)references, FOR UPDATE NOWAIT with deleted_at IS NULL,
   ascending id, one statement per row so the refusal names father or mother
   busy -> parent_locked, gone -> parent_deleted

After that only unlocked reads run (live children, the ancestor CTE, and the
backstop triggers' reads of parent and child rows). Row locks are all NOWAIT and
the only waiting lock (3) is taken before any profile row, so these operations
cannot deadlock with each other.

Every profile row lock is FOR UPDATE (not FOR NO KEY UPDATE): a parent is locked
by the child's writer and by its own delete/sex change alike, and the strongest
mode makes any two of those conflict, whichever kind each one is.
"""

from contextlib import contextmanager
from datetime import date, datetime
from functools import wraps

from django.db import OperationalError, connections, models
from django.db.models import Q

from core import rows
from core.db import LockNamespace, advisory_xact_lock, tried_lock, try_advisory_xact_lock
from core.exceptions import Conflict, InvalidInput, LockContended, VersionConflict
from core.guards import ClockNow, guarded, is_lock_error
from core.managers import TenantScopedQuerySet
from core.prepared import Prepared, in_one_statement, insert_statement, returned_by, saved, update_statement
from profiles.choices import UNDOABLE, AuditAction
from profiles.exceptions import (
    UNDO_REASON_MAX_LENGTH,
    AlreadyUndone,
    AuditEntryNotFound,
    DateNotParsable,
    InvalidDates,
    InvalidProfileData,
    OperationLocked,
    ParentDeleted,
    ParentLocked,
    ParentNotFound,
    ParentWrongSex,
    ProfileDeleted,
    ProfileHasChildren,
    ProfileNotDeleted,
    ProfileNotFound,
    SexChangeConflict,
    StaleVersion,
    UndoNotSupported,
    UndoReasonRequired,
    UndoReasonTooLong,
    UnknownField,
    WouldCreateCycle,
)

PROFILE_FIELDS = ("first_name", "last_name", "sex", "birth_date", "death_date", "father", "mother")
PARENT_SEX = {"father": "male", "mother": "female"}
DATE_FIELDS = ("birth_date", "death_date")
# What an audit entry records besides its profile (``change_recorded``).
ENTRY_VALUES = ("tenant_id", "action", "old_data", "new_data", "actor_id")


def _attname(field):
    return f"{field}_id" if field in PARENT_SEX else field


def _current(profile, field):
    return getattr(profile, _attname(field))


def _as_json(value):
    return value.isoformat() if isinstance(value, date | datetime) else value


def _normalize(changes):
    """Python values for profile fields: ids for parents, ``date`` for dates (ISO strings accepted)."""
    out = {}
    for field, value in changes.items():
        if field not in PROFILE_FIELDS:
            raise UnknownField(field=field)
        if field in PARENT_SEX and isinstance(value, models.Model):
            value = value.pk
        elif field in DATE_FIELDS and isinstance(value, str):
            try:
                value = date.fromisoformat(value)
            except ValueError:
                raise DateNotParsable(field=field) from None
        elif field == "last_name" and value is None:
            value = ""
        out[field] = value
    return out


@contextmanager
def _stored_values():
    """A rule broken by values the caller did not send (a restore or an undo brings back stored ones) is a
    refusal by the current state: 409, under the rule's own code (DESIGN: 400 is invalid input)."""
    try:
        yield
    except InvalidInput as refusal:
        refusal.status_code = Conflict.status_code
        raise


class _LockSteps:
    """Remember which lock the transaction is taking, to name a 55P03 refusal after rollback.

    ``translate()`` wraps *around* the atomic block (see ``guarded_steps``): the failed
    block has rolled back, and ``core.guards``' translator has turned the lock error
    into a plain LockContended, by the time it is renamed after the step that failed.
    """

    def __init__(self, *, profile=LockContended, entry=OperationLocked):
        self.errors = {
            "tree": LockContended,
            "profile": profile,
            "entry": entry,
            "father": lambda: ParentLocked(parent="father"),
            "mother": lambda: ParentLocked(parent="mother"),
        }
        self.current = None

    def at(self, step):
        self.current = step

    @contextmanager
    def translate(self):
        try:
            yield self
        except (OperationalError, LockContended) as exc:
            # Only a lock error the database raised is renamed; a LockContended the code raised
            # on purpose (OperationLocked, ParentLocked...) already names its refusal.
            if type(exc) not in (OperationalError, LockContended) or not is_lock_error(exc):
                raise
            cause = exc if isinstance(exc, OperationalError) else exc.__cause__
            raise self.errors.get(self.current, LockContended)() from cause


def guarded_steps(method):
    """``@guarded`` (core.guards), with a lock refusal named after the lock that failed.

    ``guarded`` opens ``transaction.atomic(using=self.db)`` and, outside it, turns a
    55P03 into LockContended; ``_LockSteps.translate()`` wraps that, also outside the
    block, and names the refusal after the step the transaction was at:
    operation_locked (the audit entry), parent_locked (father or mother) or
    resource_locked. The method gets the ``steps`` keyword to mark its steps with.
    """
    opened = guarded(method)

    @wraps(method)
    def wrapper(self, *args, **kwargs):
        steps = _LockSteps()
        with steps.translate():
            return opened(self, *args, steps=steps, **kwargs)

    wrapper.alters_data = True
    wrapper.guard = opened.guard
    return wrapper


class ProfileQuerySet(TenantScopedQuerySet):
    def live(self):
        return self.filter(deleted_at__isnull=True)

    def deleted(self):
        return self.filter(deleted_at__isnull=False)

    def children_of(self, profile_id):
        return self.filter(Q(father_id=profile_id) | Q(mother_id=profile_id))

    def locked(self):
        """Rows FOR UPDATE NOWAIT (see the module docstring for why not FOR NO KEY UPDATE)."""
        return self.select_for_update(nowait=True, no_key=False, of=("self",))


class ProfileManager(models.Manager.from_queryset(ProfileQuerySet)):
    # --- guarded operations -------------------------------------------------

    @guarded_steps
    def create_profile(self, *, tenant, actor=None, steps, **fields):
        """Create a profile and its ``create`` audit entry.

        Locks: each parent row FOR UPDATE NOWAIT, ascending id (no tree lock: a new profile
        has no descendants).

        Locks each parent FOR UPDATE NOWAIT (live, same tenant, right sex). A new
        profile has no descendants, so no cycle check and no tree lock are needed.
        Raises InvalidProfileData, InvalidDates, ParentNotFound, ParentWrongSex,
        ParentDeleted, ParentLocked, UnknownField.
        """
        data = {"last_name": "", "birth_date": None, "death_date": None, "father": None, "mother": None}
        data.update(_normalize(fields))
        if "first_name" not in data or "sex" not in data:
            raise InvalidProfileData()
        profile = self.model(tenant=tenant, version=1)
        self._check(profile, data, steps=steps, tenant=tenant)
        profile = self.create(tenant=tenant, version=1, **{_attname(f): v for f, v in data.items()})
        self._record(profile, AuditAction.CREATE, old={}, new={f: _as_json(v) for f, v in data.items()}, actor=actor)
        return profile

    @guarded_steps
    def update_profile(self, profile_id, *, tenant, version, actor=None, steps, **changes):
        """Change fields of a live profile the caller read at ``version``; write an ``update`` entry.

        Locks: PROFILE_TREE(tenant) advisory (only when a father/mother is set) -> the
        profile row FOR UPDATE NOWAIT -> the new parent rows FOR UPDATE NOWAIT, ascending id.

        Takes the tenant tree lock when a father/mother is set, then the profile
        FOR UPDATE NOWAIT, then the newly referenced parents FOR UPDATE NOWAIT;
        checks dates, sex against living children, and cycles (recursive CTE).
        Unchanged values are dropped; with nothing left the profile is returned as is.
        Raises ProfileNotFound, VersionConflict, ProfileDeleted, SexChangeConflict,
        WouldCreateCycle, the parent errors, InvalidDates, LockContended.
        """
        wanted = _normalize(changes)
        if any(wanted.get(role) is not None for role in PARENT_SEX):
            self._lock_tree(tenant, steps)
        profile = self._lock_subject(profile_id, tenant, steps)
        if profile.version != version:
            raise VersionConflict(current=profile.version)
        if profile.is_deleted:
            raise ProfileDeleted()
        delta = {f: v for f, v in wanted.items() if _current(profile, f) != v}
        if delta:
            self._check(profile, delta, steps=steps, tenant=tenant)
            self._apply(profile, delta, action=AuditAction.UPDATE, actor=actor)
        return profile

    @guarded_steps
    def soft_delete(self, profile_id, *, tenant, version, actor=None, steps):
        """Mark a profile deleted (``deleted_at = clock_timestamp()``) and write a ``delete`` entry.

        Locks: the profile row FOR UPDATE NOWAIT.

        Locks the profile FOR UPDATE NOWAIT, then refuses ProfileHasChildren while
        any live profile names it as father or mother: a child's writer locks this
        row FOR UPDATE NOWAIT before pointing at it, so the two cannot interleave.
        Raises ProfileNotFound, VersionConflict, ProfileDeleted, ProfileHasChildren, LockContended.
        """
        profile = self._lock_subject(profile_id, tenant, steps)
        if profile.version != version:
            raise VersionConflict(current=profile.version)
        if profile.is_deleted:
            raise ProfileDeleted()
        self._refuse_if_parent_of_living(profile)
        self._apply(profile, {"deleted_at": profile.db_now}, action=AuditAction.DELETE, actor=actor)
        return profile

    @guarded_steps
    def restore(self, profile_id, *, tenant, version=None, actor=None, steps):
        """Bring a soft-deleted profile back and write a ``restore`` entry.

        Locks: the profile row FOR UPDATE NOWAIT -> its father and mother rows FOR UPDATE
        NOWAIT, ascending id.

        Locks the profile, then its father and mother FOR UPDATE NOWAIT with
        deleted_at IS NULL: a profile is never restored pointing at a deleted parent.
        ``version`` is checked when given. Raises ProfileNotFound, VersionConflict,
        ProfileNotDeleted, ParentDeleted, ParentLocked, ParentWrongSex, LockContended.
        """
        profile = self._lock_subject(profile_id, tenant, steps)
        if version is not None and profile.version != version:
            raise VersionConflict(current=profile.version)
        if not profile.is_deleted:
            raise ProfileNotDeleted()
        with _stored_values():
            self._check(profile, {"deleted_at": None}, steps=steps, tenant=tenant, parents=self._parents_of(profile))
        self._apply(profile, {"deleted_at": None}, action=AuditAction.RESTORE, actor=actor)
        return profile

    # --- building blocks (call only inside the caller's atomic block) -------

    def _lock_tree(self, tenant, steps):
        steps.at("tree")
        advisory_xact_lock(LockNamespace.PROFILE_TREE, getattr(tenant, "pk", tenant), using=self.db)

    def subject_lock(self, *, profile_id, tenant):
        """The profile row FOR UPDATE NOWAIT with the clock: SQL and parameters (compiles only in a transaction)."""
        locked = self.locked().annotate(db_now=ClockNow()).filter(pk=profile_id, tenant=tenant)[:1]
        return locked.query.get_compiler(self.db).as_sql()

    # Every guarded profile operation takes it: compiled once per process (core.prepared).
    subject_locking = Prepared(subject_lock, profile_id=int, tenant=int)

    def _lock_subject(self, profile_id, tenant, steps):
        """The profile row FOR UPDATE NOWAIT, with the database clock (clock_timestamp()) as ``db_now``."""
        steps.at("profile")
        row = self.subject_locking.fetch_one(self, profile_id=profile_id, tenant=tenant)
        if row is None:
            raise ProfileNotFound()
        profile = rows.load(self.model, row[:-1], connections[self.db], self.db)
        profile.db_now = row[-1]
        return profile

    @staticmethod
    def _parents_of(profile):
        return {role: _current(profile, role) for role in PARENT_SEX if _current(profile, role) is not None}

    def _lock_parents(self, parents, *, tenant, subject_id, steps):
        """Lock each parent FOR UPDATE NOWAIT with deleted_at IS NULL, ascending id; name any refusal."""
        for role, parent_id in parents.items():
            if subject_id is not None and parent_id == subject_id:
                raise WouldCreateCycle(parent=role)
        for role, parent_id in sorted(parents.items(), key=lambda item: (item[1], item[0])):
            steps.at(role)
            row = self.locked().filter(pk=parent_id, tenant=tenant, deleted_at__isnull=True).values("sex").first()
            if row is None:
                # Not locked: only tells "deleted" from "never existed here".
                if self.filter(pk=parent_id, tenant=tenant).exists():
                    raise ParentDeleted(parent=role, profile_id=parent_id)  # which one: the fix is to restore it
                raise ParentNotFound(parent=role)
            if row["sex"] != PARENT_SEX[role]:
                raise ParentWrongSex(parent=role)
        # The parents are held: a lock error from here on (e.g. the audit INSERT's foreign-key
        # check waiting on a tenant or user row) is not about a parent, so it must not be named one.
        steps.at(None)

    def _cycle_role(self, subject_id, parents):
        """The role whose new parent has ``subject_id`` among its ancestors-or-self, else None."""
        table = self.model._meta.db_table
        roles, ids = zip(*sorted(parents.items()), strict=True)
        sql = (
            "WITH RECURSIVE anc(role, id) AS ("  # noqa: S608 - the table name comes from _meta; values are parameters
            " SELECT r.role, r.id FROM unnest(%s::text[], %s::bigint[]) AS r(role, id)"
            " UNION"  # UNION (not ALL) also ends the walk should a cycle ever exist
            f" SELECT anc.role, v.pid FROM anc JOIN {table} p ON p.id = anc.id"
            " CROSS JOIN LATERAL (VALUES (p.father_id), (p.mother_id)) AS v(pid)"
            " WHERE v.pid IS NOT NULL"
            ") SELECT role FROM anc WHERE id = %s ORDER BY role LIMIT 1"
        )
        with connections[self.db].cursor() as cursor:
            cursor.execute(sql, [list(roles), list(ids), subject_id])
            row = cursor.fetchone()
        return row[0] if row else None

    def _refuse_if_parent_of_living(self, profile):
        count = self.live().children_of(profile.pk).count()
        if count:
            raise ProfileHasChildren(count=count)

    def _check(self, profile, delta, *, steps, tenant, parents=None):
        """Validate the state ``profile`` would have after ``delta``; lock the parents it references.

        ``parents`` defaults to the father/mother that ``delta`` newly sets.
        """
        final = {f: delta[f] if f in delta else _current(profile, f) for f in PROFILE_FIELDS}
        if not final["first_name"] or final["sex"] not in PARENT_SEX.values():
            raise InvalidProfileData()
        for field in DATE_FIELDS:
            if final[field] is not None and not isinstance(final[field], date):
                raise InvalidDates()
        if final["birth_date"] and final["death_date"] and final["death_date"] < final["birth_date"]:
            raise InvalidDates()
        if "sex" in delta and profile.pk is not None and self.live().children_of(profile.pk).exists():
            raise SexChangeConflict()
        if parents is None:
            parents = {role: delta[role] for role in PARENT_SEX if delta.get(role) is not None}
        if not parents:
            return
        self._lock_parents(parents, tenant=tenant, subject_id=profile.pk, steps=steps)
        new_edges = {role: pid for role, pid in parents.items() if role in delta}
        if profile.pk is not None and new_edges:
            role = self._cycle_role(profile.pk, new_edges)
            if role is not None:
                raise WouldCreateCycle(parent=role)

    def change(self, *, pk, version, fields, **values):
        """``_apply``'s UPDATE: the profile's new version and the ``fields`` named (SQL and parameters)."""
        return update_statement(self.filter(pk=pk), version=version, **{_attname(f): values[f] for f in fields})

    def _audit_log(self):
        """The audit log's manager, on this manager's database."""
        return self.model.history.field.model._default_manager.db_manager(self.db)

    def change_recorded(
        self, *, pk, version, fields, undone_pk=None, undone_at=None, undone_by=None, undo_reason=None, **values
    ):
        """``_apply``'s one statement (SQL and parameters; ``core.prepared.in_one_statement``).

        ``WITH changed AS (<change>)`` then the audit entry's INSERT (``ENTRY_VALUES``, the profile's
        ``pk``); for an undo, ``entry AS (<the INSERT>), undone AS (<the undone entry marked: when, by
        whom, why, by the new entry>)``. Its row is what the INSERT returns.
        """
        audit = self._audit_log()
        entry = insert_statement(audit, profile_id=pk, **{name: values.pop(name) for name in ENTRY_VALUES})
        writes = [("changed", self.change(pk=pk, version=version, fields=fields, **values))]
        if undone_pk is None:
            return in_one_statement(writes, entry)
        mark = update_statement(
            audit.filter(pk=undone_pk),
            undone_at=undone_at,
            undone_by=undone_by,
            undo_reason=undo_reason,
            undo_entry=returned_by("entry", audit.model._meta.pk.column, connections[self.db].ops.quote_name),
        )
        return in_one_statement([*writes, ("entry", entry), ("undone", mark)], ("SELECT * FROM entry", []))

    # Every edit, delete, restore and undo writes the profile and its entry through it: compiled once per shape.
    changed_and_recorded = Prepared(
        change_recorded,
        pk=int,
        version=int,
        deleted_at=datetime,
        **{field: date if field in DATE_FIELDS else int if field in PARENT_SEX else str for field in PROFILE_FIELDS},
        tenant_id=int,
        action=str,
        old_data=dict,
        new_data=dict,
        actor_id=int,
        undone_pk=int,
        undone_at=datetime,
        undone_by=int,
        undo_reason=str,
    )

    def _apply(self, profile, delta, *, action, actor, undoing=None):
        """Write ``delta`` to the locked profile, bump its version and insert the audit entry, one statement.

        ``undoing``: (the entry this change undoes, the reason), marked undone by the same statement.
        """
        old = {f: _as_json(_current(profile, f)) for f in delta}
        new = {f: _as_json(v) for f, v in delta.items()}
        version = profile.version + 1  # the row is locked: no lost update
        values = dict.fromkeys((*PROFILE_FIELDS, "deleted_at")) | delta  # absent or None: part of the shape
        entry_values = dict(
            tenant_id=profile.tenant_id, action=action, old_data=old, new_data=new, actor_id=getattr(actor, "pk", None)
        )
        undone, reason = undoing or (None, None)
        marks = dict(
            undone_pk=getattr(undone, "pk", None),
            undone_at=profile.db_now if undone else None,
            undone_by=getattr(actor, "pk", None) if undone else None,
            undo_reason=reason,
        )
        row = self.changed_and_recorded.fetch_one(
            self, pk=profile.pk, version=version, fields=tuple(sorted(delta)), **values, **entry_values, **marks
        )
        for field, value in delta.items():
            setattr(profile, _attname(field), value)
        profile.version = version
        audit = self._audit_log()
        entry = saved(audit, {**entry_values, "profile_id": profile.pk}, row)
        entry.profile, entry.actor = profile, actor
        return entry

    def _record(self, profile, action, *, old, new, actor):
        audit = self.model.history.field.model.objects
        entry = audit.recorded.create(
            audit,
            tenant_id=profile.tenant_id,
            profile_id=profile.pk,
            action=action,
            old_data=old,
            new_data=new,
            actor_id=getattr(actor, "pk", None),
        )
        entry.profile, entry.actor = profile, actor
        return entry

    def _undo(self, entry, *, steps, actor, reason):
        """Reverse ``entry`` on its locked profile and mark it undone (steps 3-6 of the undo).

        Returns (profile, undo entry).
        """
        tenant_id = entry.tenant_id
        if entry.action == AuditAction.UPDATE and any(entry.old_data.get(role) is not None for role in PARENT_SEX):
            self._lock_tree(tenant_id, steps)
        profile = self._lock_subject(entry.profile_id, tenant_id, steps)
        if entry.action == AuditAction.UPDATE:
            if profile.is_deleted:
                raise ProfileDeleted()
            fields = [f for f in PROFILE_FIELDS if f in entry.new_data]
            stale = [f for f in fields if _as_json(_current(profile, f)) != entry.new_data[f]]
            if stale:
                raise StaleVersion(fields=stale)
            delta = _normalize({f: entry.old_data.get(f) for f in fields})
            with _stored_values():
                self._check(profile, delta, steps=steps, tenant=tenant_id)
        elif entry.action == AuditAction.DELETE:  # undo = restore
            if _as_json(profile.deleted_at) != entry.new_data.get("deleted_at"):
                raise StaleVersion(fields=["deleted_at"])
            delta = {"deleted_at": None}
            with _stored_values():
                self._check(profile, delta, steps=steps, tenant=tenant_id, parents=self._parents_of(profile))
        else:  # "restore": undo = soft delete
            if profile.is_deleted:
                raise StaleVersion(fields=["deleted_at"])
            self._refuse_if_parent_of_living(profile)
            delta = {"deleted_at": profile.db_now}
        return profile, self._apply(profile, delta, action=AuditAction.UNDO, actor=actor, undoing=(entry, reason))


class ProfileAuditLogQuerySet(TenantScopedQuerySet):
    def undone(self):
        return self.filter(undone_at__isnull=False)

    def not_undone(self):
        return self.filter(undone_at__isnull=True)


class ProfileAuditLogManager(models.Manager.from_queryset(ProfileAuditLogQuerySet)):
    def entry_lock(self, *, entry_id, tenant):
        """The entry row FOR UPDATE NOWAIT with its actor (the undo's answer names who made the change),
        where the undo's try lock was got (``core.db.try_advisory_xact_lock``'s ``gated``)."""
        locked = self.select_for_update(nowait=True, no_key=False, of=("self",)).select_related("actor")
        return locked.filter(tried_lock(), pk=entry_id, tenant=tenant)[:1].query.get_compiler(self.db).as_sql()

    entry_locking = Prepared(entry_lock, entry_id=int, tenant=int)

    # Every change of a profile records one, in its transaction: compiled once per process.
    recorded = Prepared(
        insert_statement, tenant_id=int, profile_id=int, action=str, old_data=dict, new_data=dict, actor_id=int
    )

    def _lock_entry(self, entry_id, tenant):
        """The undo's try lock and the entry, locked, in one statement: the entry with its actor loaded
        (None when a command or sweep made the change), or None; OperationLocked when the try lock was busy."""
        got, *row = try_advisory_xact_lock(
            LockNamespace.AUDIT_UNDO,
            getattr(tenant, "pk", tenant),  # another tenant's undo of this id neither waits for it nor blocks it
            entry_id,
            gated=self.entry_locking.statement(self, entry_id=entry_id, tenant=tenant),
            using=self.db,
        )
        if not got:
            raise OperationLocked()
        if row[0] is None:  # the entry's id: no entry
            return None
        connection, width = connections[self.db], len(self.model._meta.concrete_fields)
        entry = rows.load(self.model, row[:width], connection, self.db)
        actor_model = self.model.actor.field.related_model
        entry.actor = None if row[width] is None else rows.load(actor_model, row[width:], connection, self.db)
        return entry

    @guarded_steps
    def undo(self, entry_id, *, tenant, actor, reason, steps):
        """Reverse one audit entry exactly once, never pointing a profile at a deleted, busy or descendant parent.

        Locks: AUDIT_UNDO(tenant, entry) advisory try-lock -> the entry row FOR UPDATE NOWAIT ->
        PROFILE_TREE(tenant) advisory (only when a parent is restored) -> the profile row
        FOR UPDATE NOWAIT -> the restored parent rows FOR UPDATE NOWAIT, ascending id.

        1. try-lock advisory AUDIT_UNDO:<tenant>:<entry>: busy -> OperationLocked at once;
        2. the entry FOR UPDATE NOWAIT (busy -> OperationLocked; done -> AlreadyUndone;
           create/undo entries -> UndoNotSupported), in the same statement as 1 and only
           where 1 got the lock;
        3. when it restores a father/mother: the tenant's PROFILE_TREE advisory lock
           (waits at most lock_timeout -> resource_locked), so no concurrent re-parenting
           can close a cycle the check below does not see;
        4. the profile FOR UPDATE NOWAIT (busy -> resource_locked); StaleVersion naming
           every field this entry wrote that no longer holds its value;
        5. each parent it restores FOR UPDATE NOWAIT, deleted_at IS NULL: ParentLocked /
           ParentDeleted naming father or mother; WouldCreateCycle if now a descendant;
        6. apply, bump version, insert the ``undo`` entry, mark this one undone: one statement.
        Returns the original entry (now undone; ``undo_entry`` and ``profile`` loaded).
        """
        reason = (reason or "").strip()
        if not reason:
            raise UndoReasonRequired()
        if len(reason) > UNDO_REASON_MAX_LENGTH:
            raise UndoReasonTooLong(maximum=UNDO_REASON_MAX_LENGTH)
        steps.at("entry")
        entry = self._lock_entry(entry_id, tenant)
        if entry is None:
            raise AuditEntryNotFound()
        if entry.undone_at is not None:
            raise AlreadyUndone()
        if entry.action not in UNDOABLE:
            raise UndoNotSupported(action=self.model.Action(entry.action))  # its label rendered per language
        profile_model = self.model.profile.field.related_model
        # Marked undone by the statement that writes the profile and the undo entry. Its undone_at is
        # db_now, clock_timestamp() read by the profile lock: the database's clock, and the same
        # instant the undo entry's profile change is stamped with.
        profile, undo_entry = profile_model.objects._undo(entry, steps=steps, actor=actor, reason=reason)
        entry.undone_at, entry.undone_by, entry.undo_reason = profile.db_now, actor, reason
        entry.undo_entry, entry.profile = undo_entry, profile
        return entry
