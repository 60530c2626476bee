import pgtrigger
from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from core.history import tracked
from core.integrity import BumpVersion, GuardedModel, Refusal, VersionOnlyIncreases, refusal_sql, within
from core.models import Tenant
from profiles.choices import AuditAction, Sex
from profiles.managers import ProfileAuditLogManager, ProfileManager

# The columns an operator or API client edits (through ``update_profile``).
PROFILE_EDITABLE = ("first_name", "last_name", "sex", "birth_date", "death_date", "father", "mother")


class ProfileParentsLive(pgtrigger.Trigger):
    """Refuse a live profile that starts pointing at a father or mother it may not have.

    Fires when a row is inserted, when its father or mother changes, or when it is restored
    (``deleted_at`` back to NULL), for rows that are live afterwards; each parent so referenced
    must be live (not soft-deleted, not missing), of the same tenant, of its role's sex (a father
    male, a mother female) and not the profile itself or one of its descendants (a cycle; on an
    insert too: with foreign keys deferred, a row inserted earlier in the transaction may already
    name the new one as its parent). A deleted row may keep or take any parent, but never a descendant: no profile, live
    or deleted, is its own ancestor. A profile's own sex may not change while a live child has it as the other parent,
    and no profile moves to another tenant (its parents and children would be another tenant's).
    A backstop behind the manager's locks, not the guard: the manager locks each parent FOR
    UPDATE NOWAIT under the tenant's tree lock and names the refusal (parent_deleted,
    parent_not_found, parent_wrong_sex, would_create_cycle, sex_change_conflict); these unlocked
    reads only make a writer that skipped the manager fail loudly. Raises SQLSTATE 23514 named
    ``profile_parent_transition``.
    """

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.Update
    declare = [
        ("v_role", "text"),
        ("v_why", "text"),
        ("v_parent", "bigint"),
        ("v_was", "bigint"),
        ("v_sex", "text"),
        ("v_found", "record"),
        ("v_again", "boolean"),
        ("v_live", "boolean"),
        ("v_named", "boolean"),
    ]

    def get_func(self, model):
        # v_again: inserted or restored, the row points at every parent again; else only at a changed one.
        # v_live: the parent rules hold for a live row; a deleted one is only kept from closing a cycle.
        # v_named: a row some other row names as parent (on an insert, only with foreign keys deferred): only
        # then can its ancestry reach it, so an insert walks it only then (two index probes otherwise).
        # (No SQL comment in the body: the migration stores it on one line.)
        table = model._meta.db_table
        refuse = refusal_sql(
            self.name,
            "'live->' || v_why",
            "format('%s: profile %s may not have that %s (%s)', TG_TABLE_NAME, NEW.\"id\", v_role, v_why)",
        )
        return self.format_sql(
            f"""
            IF TG_OP = 'UPDATE' AND OLD."tenant_id" IS DISTINCT FROM NEW."tenant_id" THEN
                v_role := 'tenant'; v_why := 'another tenant';
                {refuse}
            END IF;
            IF TG_OP = 'UPDATE' AND OLD."deleted_at" IS NOT DISTINCT FROM NEW."deleted_at"
               AND OLD."father_id" IS NOT DISTINCT FROM NEW."father_id"
               AND OLD."mother_id" IS NOT DISTINCT FROM NEW."mother_id"
               AND OLD."sex" IS NOT DISTINCT FROM NEW."sex" THEN
                RETURN NEW;
            END IF;
            v_live := NEW."deleted_at" IS NULL;
            v_again := v_live AND (TG_OP = 'INSERT' OR OLD."deleted_at" IS NOT NULL);
            v_named := TG_OP = 'UPDATE' OR EXISTS (
                SELECT 1 FROM "{table}" c WHERE c."father_id" = NEW."id" OR c."mother_id" = NEW."id");
            FOREACH v_role IN ARRAY ARRAY['father', 'mother'] LOOP
                IF v_role = 'father' THEN
                    v_parent := NEW."father_id"; v_sex := 'male';
                    v_was := CASE WHEN TG_OP = 'UPDATE' THEN OLD."father_id" END;
                ELSE
                    v_parent := NEW."mother_id"; v_sex := 'female';
                    v_was := CASE WHEN TG_OP = 'UPDATE' THEN OLD."mother_id" END;
                END IF;
                CONTINUE WHEN v_parent IS NULL OR NOT (v_again OR v_was IS DISTINCT FROM v_parent);
                IF v_live THEN
                    SELECT p."deleted_at", p."tenant_id", p."sex" INTO v_found
                      FROM "{table}" p WHERE p."id" = v_parent;
                    IF NOT FOUND OR v_found."deleted_at" IS NOT NULL THEN
                        v_why := v_role || ' deleted';
                    ELSIF v_found."tenant_id" IS DISTINCT FROM NEW."tenant_id" THEN
                        v_why := v_role || ' of another tenant';
                    ELSIF v_found."sex" IS DISTINCT FROM v_sex THEN
                        v_why := v_role || ' not ' || v_sex;
                    END IF;
                END IF;
                IF v_why IS NULL AND v_named AND EXISTS (
                    WITH RECURSIVE up("id") AS (
                        SELECT v_parent
                        UNION
                        SELECT x."pid" FROM up JOIN "{table}" p ON p."id" = up."id"
                        CROSS JOIN LATERAL (VALUES (p."father_id"), (p."mother_id")) AS x("pid")
                        WHERE x."pid" IS NOT NULL
                    ) SELECT 1 FROM up WHERE up."id" = NEW."id"
                ) THEN
                    v_why := v_role || ' a descendant';
                END IF;
                IF v_why IS NOT NULL THEN {refuse} END IF;
            END LOOP;
            IF v_live AND TG_OP = 'UPDATE' AND OLD."sex" IS DISTINCT FROM NEW."sex" AND EXISTS (
                SELECT 1 FROM "{table}" c WHERE c."deleted_at" IS NULL AND (
                    (c."father_id" = NEW."id" AND NEW."sex" <> 'male')
                    OR (c."mother_id" = NEW."id" AND NEW."sex" <> 'female'))
            ) THEN
                v_role := 'sex'; v_why := 'sex of a parent of live children';
                {refuse}
            END IF;
            RETURN NEW;
            """,  # noqa: S608 - trigger SQL from _meta names, run by the migration
        )


class ProfileChildrenLive(pgtrigger.Trigger):
    """Refuse soft-deleting a profile that a live profile names as father or mother.

    A backstop behind the manager's locks: ``soft_delete`` locks the profile FOR UPDATE
    NOWAIT and counts live children (profile_has_children), and every child's writer
    locks this row before pointing at it. Raises SQLSTATE 23514 named
    ``profile_children_transition``.
    """

    when = pgtrigger.Before
    operation = pgtrigger.Update
    condition = pgtrigger.Condition('OLD."deleted_at" IS NULL AND NEW."deleted_at" IS NOT NULL')

    def get_func(self, model):
        table = model._meta.db_table
        refuse = refusal_sql(
            self.name,
            "'live->deleted with live children'",
            "format('%s: profile %s is the father or mother of live profiles; it cannot be deleted', "
            'TG_TABLE_NAME, OLD."id")',
        )
        return self.format_sql(
            f"""
            IF EXISTS (SELECT 1 FROM "{table}" c WHERE c."deleted_at" IS NULL
                       AND (c."father_id" = OLD."id" OR c."mother_id" = OLD."id")) THEN
                {refuse}
            END IF;
            RETURN NEW;
            """  # noqa: S608 - trigger SQL from _meta names, installed by the migration
        )


@tracked()
class Profile(GuardedModel):
    """A person in a tenant's family tree. Written only through ``Profile.objects`` verbs.

    Guarded columns (parents, ``deleted_at``, ``version``, ``tenant``, ``sex`` - a parent's
    sex has rules) change only through the manager: ``save()`` refuses to write them.
    """

    guarded_fields = ("father", "mother", "deleted_at", "version", "tenant", "sex")

    Sex = Sex

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="profiles", verbose_name=_("tenant"))
    first_name = models.CharField(_("first name"), max_length=100)
    last_name = models.CharField(_("last name"), max_length=100, blank=True, default="")
    sex = models.CharField(_("sex"), max_length=6, choices=Sex.choices)
    birth_date = models.DateField(_("date of birth"), null=True, blank=True)
    death_date = models.DateField(_("date of death"), null=True, blank=True)
    father = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="children_of_father",
        verbose_name=_("father"),
    )
    mother = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="children_of_mother",
        verbose_name=_("mother"),
    )
    deleted_at = models.DateTimeField(_("deleted at"), null=True, blank=True)
    version = models.PositiveIntegerField(_("version"), default=1)
    created_at = models.DateTimeField(_("created at"), db_default=Now())

    objects = ProfileManager()

    class Meta:
        ordering = ["id"]
        verbose_name = _("profile")
        verbose_name_plural = _("profiles")
        indexes = [models.Index(fields=["tenant", "last_name", "first_name"], name="profile_tenant_name_idx")]
        triggers = [
            VersionOnlyIncreases(name="profile_version_transition"),
            # A writer that changes an edited column without bumping the version still bumps it,
            # so an edit carrying the version it read cannot overwrite that change.
            BumpVersion(name="profile_version_bump", fields=[*PROFILE_EDITABLE, "deleted_at"]),
            ProfileParentsLive(name="profile_parent_transition"),
            ProfileChildrenLive(name="profile_children_transition"),
        ]
        constraints = [
            # Backstops for rules the manager enforces (and names) first.
            models.CheckConstraint(condition=Q(sex__in=["male", "female"]), name="profile_sex_valid"),
            models.CheckConstraint(condition=Q(version__gte=1), name="profile_version_positive"),
            models.CheckConstraint(
                condition=Q(birth_date__isnull=True) | Q(death_date__isnull=True) | Q(death_date__gte=F("birth_date")),
                name="profile_death_not_before_birth",
            ),
            models.CheckConstraint(
                condition=Q(father__isnull=True) | ~Q(father=F("id")), name="profile_not_own_father"
            ),
            models.CheckConstraint(
                condition=Q(mother__isnull=True) | ~Q(mother=F("id")), name="profile_not_own_mother"
            ),
        ]

    def __str__(self):
        return f"{self.first_name} {self.last_name}".strip()

    @property
    def is_deleted(self):
        return self.deleted_at is not None


class AuditAppendOnly(pgtrigger.Trigger):
    """Keep the audit log append-only, in the database.

    - no DELETE; an INSERT is never already undone;
    - what was recorded (tenant, profile, action, old_data, new_data, created_at, actor)
      never changes; ``actor`` may only become NULL (its user was deleted: SET_NULL);
    - the undo columns are set once: while an entry is not undone, ``undone_by`` and
      ``undo_reason`` change only together with ``undone_at``; once undone, ``undone_at``,
      ``undo_reason`` and ``undo_entry`` never change again (nor are cleared) and
      ``undone_by`` may only become NULL (user deleted).
    That ``undone_at`` and ``undo_entry`` are set together is the CHECK
    ``audit_undone_has_undo_entry``. Only ``ProfileAuditLog.objects.undo`` marks entries.
    Raises SQLSTATE 23514 named ``audit_append_only_transition`` (409 invalid_transition).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Update | pgtrigger.Delete
    declare = [("v_change", "text")]

    RECORDED = ("tenant", "profile", "action", "old_data", "new_data", "created_at")
    SET_ONCE = ("undone_at", "undo_reason", "undo_entry")
    USERS = ("actor", "undone_by")

    def get_func(self, model):
        column = {field: model._meta.get_field(field).column for field in (*self.RECORDED, *self.SET_ONCE, *self.USERS)}

        def changed(field):
            return f'NEW."{column[field]}" IS DISTINCT FROM OLD."{column[field]}"'

        def reassigned(field):  # changed to another user (becoming NULL is a user deletion)
            return f'({changed(field)} AND NEW."{column[field]}" IS NOT NULL)'

        refuse = refusal_sql(
            self.name,
            "v_change",
            "format('%s: audit entry %s is append-only (%s)', TG_TABLE_NAME, OLD.\"id\", v_change)",
        )
        undone = f'OLD."{column["undone_at"]}" IS NOT NULL'
        return self.format_sql(
            f"""
            IF TG_OP = 'DELETE' THEN
                v_change := 'recorded->deleted';
            ELSIF {" OR ".join(changed(f) for f in self.RECORDED)} OR {reassigned("actor")} THEN
                v_change := 'recorded->rewritten';
            ELSIF {undone} AND ({" OR ".join(changed(f) for f in self.SET_ONCE)} OR {reassigned("undone_by")}) THEN
                v_change := 'undone->changed';
            ELSIF NOT {undone} AND NEW."{column["undone_at"]}" IS NULL
                  AND ({changed("undo_reason")} OR {changed("undone_by")}) THEN
                v_change := 'not undone->undo details without undone_at';
            END IF;
            IF v_change IS NOT NULL THEN {refuse} END IF;
            IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
            RETURN NEW;
            """
        )


class AuditInsertedNotUndone(Refusal):
    """Refuse inserting an audit entry that is already undone: only ``undo`` marks an entry undone.

    Raises SQLSTATE 23514 named ``audit_insert_transition`` (409 invalid_transition).
    """

    operation = pgtrigger.Insert
    condition = pgtrigger.Condition('NEW."undone_at" IS NOT NULL OR NEW."undo_entry_id" IS NOT NULL')
    detail_sql = "'->undone'"
    message_sql = "format('%s: a new audit entry cannot be already undone', TG_TABLE_NAME)"


class AuditLinks(pgtrigger.Trigger):
    """Refuse, in the database, an audit entry that points where it may not: written under another tenant than
    its profile's (that tenant's operators would read another's personal data), or marked undone by an entry
    that is not a later ``undo`` of the same profile (marked undone without the change being reversed, the
    real undo would then be refused ``already_undone``).

    An AFTER trigger: the undo writes its own entry and the undone entry's mark in one statement, and only at
    that statement's end is the new entry there to be judged. One primary-key probe per entry written.
    Raises SQLSTATE 23514 named ``audit_links_transition`` (409 invalid_transition).
    """

    when = pgtrigger.After
    operation = pgtrigger.Insert | pgtrigger.UpdateOf("undo_entry_id")

    def get_func(self, model):
        profiles = model._meta.get_field("profile").related_model._meta.db_table
        entries = model._meta.db_table

        def refuse(old, new, why):
            message = f"format('%s: audit entry %s {why}', TG_TABLE_NAME, NEW.\"id\")"
            return refusal_sql(self.name, f"'{old}->{new}'", message)

        return self.format_sql(
            f"""
            IF TG_OP = 'INSERT' THEN
                IF NOT EXISTS (
                    SELECT 1 FROM "{profiles}" WHERE "id" = NEW."profile_id" AND "tenant_id" = NEW."tenant_id"
                ) THEN {refuse("profile", "entry", "is not in the tenant of its profile")} END IF;
                RETURN NULL;
            END IF;
            IF NEW."undo_entry_id" IS NOT NULL AND NEW."undo_entry_id" IS DISTINCT FROM OLD."undo_entry_id"
               AND NOT EXISTS (
                    SELECT 1 FROM "{entries}" WHERE "id" = NEW."undo_entry_id" AND "action" = 'undo'
                    AND "profile_id" = NEW."profile_id" AND "id" > NEW."id"
               ) THEN {refuse("entry", "undo", "is marked undone by no later undo of its profile")} END IF;
            RETURN NULL;
            """  # noqa: S608 - identifiers from model meta, no values
        )


# An audit entry as the API, the admin and the guard show it (after its tenant and profile).
AUDIT_RECORD = (
    "action",
    "old_data",
    "new_data",
    "actor",
    "created_at",
    "undone_at",
    "undone_by",
    "undo_reason",
    "undo_entry",
)


class ProfileAuditLog(GuardedModel):
    """One change of one profile: what it was, what it became, who did it, and whether it was undone.

    Entries are written by the managers only: ``save()`` of an existing entry is refused
    (every column is guarded) and the database keeps the log append-only.
    """

    guarded_fields = ("tenant", "profile", *AUDIT_RECORD)

    Action = AuditAction

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+", verbose_name=_("tenant"))
    profile = models.ForeignKey(Profile, on_delete=models.PROTECT, related_name="history", verbose_name=_("profile"))
    action = models.CharField(_("action"), max_length=8, choices=Action.choices)
    old_data = models.JSONField(_("old data"), default=dict, blank=True)
    new_data = models.JSONField(_("new data"), default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    undone_at = models.DateTimeField(_("undone at"), null=True, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("undone by"),
    )
    undo_reason = models.TextField(_("undo reason"), blank=True, default="")
    undo_entry = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="undoes",
        verbose_name=_("undo entry"),
    )

    objects = ProfileAuditLogManager()

    class Meta:
        ordering = ["id"]
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit log")
        triggers = [
            AuditAppendOnly(name="audit_append_only_transition"),
            AuditInsertedNotUndone(name="audit_insert_transition"),
            AuditLinks(name="audit_links_transition"),
        ]
        indexes = [
            models.Index(fields=["profile", "id"], name="audit_profile_idx"),
            models.Index(fields=["tenant", "action"], name="audit_tenant_action_idx"),
        ]
        constraints = [
            within("action", AuditAction, name="audit_action_valid"),
            # An entry is undone exactly when it links to the undo entry that undid it.
            models.CheckConstraint(
                condition=Q(undone_at__isnull=True, undo_entry__isnull=True)
                | Q(undone_at__isnull=False, undo_entry__isnull=False),
                name="audit_undone_has_undo_entry",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.action} {self.profile_id}"

    @property
    def is_undone(self):
        return self.undone_at is not None
