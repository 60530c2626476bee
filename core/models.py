import json
import zoneinfo
from datetime import timedelta

import pgtrigger
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from core.db import LockNamespace, delete_skipping_locked, lock_key
from core.db_backend.base import execute_carrying_timeouts
from core.exceptions import LastOwner, MemberAlreadyExists, NotFound, TenantSlugTaken, UnknownTimeZone
from core.guards import ClockNow, constraint_errors, guarded, sweep
from core.history import tracked
from core.integrity import BumpVersion, FrozenColumns, SetOnce, StateMachine, VersionOnlyIncreases, refusal_sql
from core.managers import IdempotencyKeyManager
from core.prepared import Prepared
from core.versioned_edit import delete_at_version, edit_at_version, refuse_unknown_fields


class TenantManager(models.Manager):
    def slug_lookup(self, *, slug):
        """The tenant with this slug: SQL and parameters."""
        return self.filter(slug=slug).order_by().query.get_compiler(self.db).as_sql()

    # The first read of every public request: compiled once per process (core.prepared).
    slugged = Prepared(slug_lookup, slug=str)

    def by_slug(self, slug):
        """The tenant with this slug, or None."""
        return self.slugged.instance(self, slug=slug)

    @guarded
    def edit_tenant(self, tenant_id, *, version, **changes):
        """Write only the changed fields (name, slug, time zone) of a tenant, at the version the caller read.

        Locks: the tenant row FOR NO KEY UPDATE (waits up to lock_timeout; no other lock).

        Refuses with VersionConflict when another edit committed since the caller read the row
        (tenant_version bumped it): a page opened before a colleague changed the slug, every API
        client's path, never writes the old one back. Raises NotFound, VersionConflict; ValueError
        for another field.
        """
        refuse_unknown_fields(changes, TENANT_EDITABLE, model="Tenant", edit="a tenant edit")
        return edit_at_version(self.filter(pk=tenant_id), version=version, changes=changes, missing=NotFound)


# What an owner edits on their tenant (TenantAdmin, through Tenant.objects.edit_tenant); an edit bumps ``version``.
TENANT_EDITABLE = ("name", "slug", "time_zone")


def validate_time_zone(name):
    """An IANA time zone name (Europe/Paris, America/Los_Angeles, UTC); the database judges it again."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", a directory
        raise ValidationError(
            _("Unknown time zone %(name)s: give an IANA name such as Europe/Paris."),
            code="unknown_time_zone",
            params={"name": name},
        ) from None


class TimeZoneKnown(pgtrigger.Trigger):
    """Refuse, in the database, a tenant whose time zone PostgreSQL does not know: every hold, proposal and
    availability reads the shop's day as ``clock_timestamp() AT TIME ZONE`` it, and an unknown name there
    would fail each of them (a 500 on every booking of the shop), not the edit that stored it. Raises
    SQLSTATE 23514 named ``tenant_time_zone_known`` (400 unknown_time_zone)."""

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.UpdateOf("time_zone")

    def get_func(self, model):
        refusal = refusal_sql(
            self.name, 'NEW."time_zone"', "format('%s: unknown time zone %L', TG_TABLE_NAME, NEW.\"time_zone\")"
        )
        return self.format_sql(
            f"""
            BEGIN
                PERFORM clock_timestamp() AT TIME ZONE NEW."time_zone";
            EXCEPTION WHEN invalid_parameter_value THEN
                {refusal}
            END;
            RETURN NEW;
            """
        )


class Tenant(models.Model):
    """A business using Lockstep: its packages, codes, sessions and family trees belong to it."""

    name = models.CharField(_("name"), max_length=200)
    slug = models.SlugField(_("slug"), max_length=64, unique=True)
    # The shop's own day: a date is in the past, today or bookable by this zone's calendar, not the server's.
    time_zone = models.CharField(
        _("time zone"),
        max_length=64,
        default="UTC",
        db_default="UTC",
        validators=[validate_time_zone],
        help_text=_("The shop's IANA time zone (Europe/Paris): the day its dates begin and end."),
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="tenants", blank=True, verbose_name=_("members")
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)

    objects = TenantManager()

    class Meta:
        ordering = ["slug"]
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")
        triggers = [
            BumpVersion(name="tenant_version", fields=TENANT_EDITABLE),
            VersionOnlyIncreases(name="tenant_version_transition"),
            TimeZoneKnown(name="tenant_time_zone_known"),
        ]

    def __str__(self):
        return self.name


# What an owner edits on a membership (MembershipAdmin, through Membership.objects.edit_member); an edit by
# anyone bumps ``version``, so a page read before a demotion cannot write the old role back.
MEMBERSHIP_EDITABLE = ("user", "role")


class MembershipManager(models.Manager):
    @guarded
    def edit_member(self, membership_id, *, version, **changes):
        """Write only the changed fields (user, role) of a membership, at the version the caller read.

        Locks: the membership row FOR NO KEY UPDATE (waits up to lock_timeout); at commit, when an owner
        was demoted, TENANT_OWNERS(tenant) (the membership_keeps_an_owner trigger, which counts the owners left).

        Refuses with VersionConflict when another edit committed since the caller read the row
        (membership_version bumped it): a form opened before a colleague demoted a member never
        promotes them back; with LastOwner when the tenant's last owner would be demoted (at the
        commit: inside a caller's transaction, at that one's). Raises NotFound, VersionConflict,
        LastOwner; ValueError for another field.
        """
        refuse_unknown_fields(changes, MEMBERSHIP_EDITABLE, model="Membership", edit="a member edit")
        return edit_at_version(self.filter(pk=membership_id), version=version, changes=changes, missing=NotFound)

    @guarded
    def delete_member(self, membership_id, *, version):
        """Remove a member, at the version the caller read (the member's page, the list's bulk delete, the
        tenant page's inline all show one).

        Locks: the membership row FOR UPDATE (waits up to lock_timeout); then, when an owner was removed,
        TENANT_OWNERS(tenant) (the membership_keeps_an_owner trigger, which counts the owners left).

        Refuses with VersionConflict when the membership changed since the caller read it: a page opened
        before a colleague promoted the member to owner does not remove an owner nobody was shown; with
        LastOwner when it is the tenant's last owner, judged before it returns (not at a caller's commit),
        so each row of a bulk removal is refused on its own. Raises NotFound, VersionConflict, LastOwner.
        """
        delete_at_version(self.filter(pk=membership_id), version=version, missing=NotFound)
        connections[self.db].check_constraints()  # the deferred owner count, now: SET CONSTRAINTS ALL IMMEDIATE


class KeepsAnOwner(pgtrigger.Trigger):
    """A tenant that has an owner keeps one: refuse, at commit, a change that took its last owner away (a
    demotion, a deletion, a user's deletion cascading to it), whichever path wrote it.

    Deferred to the commit so that a transaction may hand ownership over (promote, then demote), and so
    that a tenant's own deletion, which Django carries out members first, passes: the tenant row is gone
    by then. Two owners demoting each other at once would each count the other as still an owner; the
    count is therefore taken under the tenant's TENANT_OWNERS advisory lock, on a snapshot taken after it,
    so the second sees the first's commit and is refused.
    """

    when = pgtrigger.After
    operation = pgtrigger.Update | pgtrigger.Delete
    timing = pgtrigger.Deferred
    condition = pgtrigger.Q(old__role="owner")

    def get_func(self, model):
        key = lock_key(LockNamespace.TENANT_OWNERS, "")
        message = "format('tenant %s would have no owner', OLD.tenant_id)"
        return self.format_sql(
            f"""
            IF TG_OP = 'UPDATE' AND NEW.role = 'owner' AND NEW.tenant_id = OLD.tenant_id THEN RETURN NULL; END IF;
            PERFORM pg_advisory_xact_lock(hashtextextended('{key}' || OLD.tenant_id, 0));
            IF NOT EXISTS (SELECT 1 FROM {Tenant._meta.db_table} WHERE id = OLD.tenant_id) THEN RETURN NULL; END IF;
            IF NOT EXISTS (SELECT 1 FROM {model._meta.db_table} WHERE tenant_id = OLD.tenant_id AND role = 'owner') THEN
                {refusal_sql(self.name, "'owner->none'", message)}
            END IF;
            RETURN NULL;
            """  # noqa: S608 - table names and a constant key, no input
        )


@tracked()
class Membership(models.Model):
    class Role(models.TextChoices):
        """What a member may do in the admin (core/admin_scope.py); an API client has no admin access."""

        OWNER = "owner", _("owner")  # everything a manager may, and the tenant's members
        STAFF = "staff", _("manager")  # changes rows, runs the money actions
        VIEWER = "viewer", _("viewer")  # reads only
        API = "api", _("API client")

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("tenant"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships", verbose_name=_("user")
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.STAFF, verbose_name=_("role"))
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)
    created_at = models.DateTimeField(_("created at"), db_default=Now())

    objects = MembershipManager()

    class Meta:
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user_per_tenant")]
        triggers = [
            BumpVersion(name="membership_version", fields=MEMBERSHIP_EDITABLE),
            VersionOnlyIncreases(name="membership_version_transition"),
            KeepsAnOwner(name="membership_keeps_an_owner"),
        ]

    def __str__(self):
        return f"{self.user} @ {self.tenant}"


constraint_errors({"membership_unique_user_per_tenant": MemberAlreadyExists, "core_tenant_slug_key": TenantSlugTaken})
constraint_errors({"membership_keeps_an_owner": LastOwner, "tenant_time_zone_known": UnknownTimeZone})


class IdempotencyKeyState(models.TextChoices):
    IN_PROGRESS = "in_progress", _("in progress")
    COMPLETED = "completed", _("completed")


IDEMPOTENCY_KEY_TRANSITIONS = [
    (None, IdempotencyKeyState.IN_PROGRESS),  # claimed by the request that runs the work (claim)
    (IdempotencyKeyState.IN_PROGRESS, IdempotencyKeyState.COMPLETED),  # its answer kept for replay (complete)
]


class IdempotencyKey(models.Model):
    """The first answer to a POST sent with an Idempotency-Key, kept for replay.

    The database keeps "exactly once" whoever writes the row: a completed key never goes back to in progress
    (a retry would run the work again), its answer is never rewritten, and the request it was claimed for
    (principal, key, method, path, body's fingerprint) never changes.
    """

    State = IdempotencyKeyState

    # "user:<id>" or "anonymous:<sha256 of the path>"
    principal = models.CharField(max_length=100, verbose_name=_("principal"))
    key = models.CharField(max_length=255, verbose_name=_("key"))
    method = models.CharField(max_length=10, verbose_name=_("method"))
    path = models.CharField(max_length=500, verbose_name=_("path"))
    fingerprint = models.CharField(max_length=64, verbose_name=_("fingerprint"))  # sha256 of method, path and body
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_PROGRESS, verbose_name=_("state"))
    response_status = models.PositiveSmallIntegerField(null=True, blank=True, verbose_name=_("response status"))
    response_body = models.JSONField(null=True, blank=True, verbose_name=_("response body"))
    created_at = models.DateTimeField(db_default=Now(), verbose_name=_("created at"))
    expires_at = models.DateTimeField(db_index=True, verbose_name=_("expires at"))
    # A two-phase request's work, noted in the transaction that commits it (the booking it held or
    # cancelled): a retry after the request died unanswered resumes it instead of doing it again.
    work_id = models.BigIntegerField(null=True, blank=True, verbose_name=_("work"))

    objects = IdempotencyKeyManager()

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["principal", "key"], name="idempotency_key_unique_per_principal"),
            # an answer exactly when completed: a replay never meets a completed key without one
            models.CheckConstraint(
                condition=Q(state=IdempotencyKeyState.IN_PROGRESS, response_status__isnull=True)
                | Q(state=IdempotencyKeyState.COMPLETED, response_status__isnull=False),
                name="idempotency_key_answer_when_completed",
            ),
        ]
        triggers = [
            StateMachine(
                name="idempotency_key_state_transition", field="state", transitions=IDEMPOTENCY_KEY_TRANSITIONS
            ),
            FrozenColumns(
                name="idempotency_key_request_transition", fields=("principal", "key", "method", "path", "fingerprint")
            ),
            # named to sort after the state machine's: a completed key sent back, its answer cleared, is refused
            # as the move it is
            SetOnce(name="idempotency_key_stored_answer_transition", fields=("response_status", "response_body")),
        ]

    def __str__(self):
        return f"{self.principal} {self.key}"


class ThrottleBucketManager(models.Manager):
    """Kept beside its model: a throttle bucket is infrastructure of the API, not a domain aggregate."""

    @sweep
    def prune(self, *, batch=1000):
        """Delete buckets whose theoretical arrival time has passed; return how many went.

        Locks: each lapsed bucket's row, a batch at a time (``core.db.delete_skipping_locked``; a
        bucket an upsert holds is skipped, and its tat is then in the future anyway).
        """
        return delete_skipping_locked(self.filter(tat__lt=Now()), batch=batch)


class ThrottleBucket(models.Model):
    """One rate-limit bucket: the GCRA "theoretical arrival time" of the next request for a key.

    Why a table and not Django's cache: DRF's SimpleRateThrottle reads the request
    history, then writes it back, and Django's DatabaseCache has no atomic increment,
    so concurrent requests overwrite each other's counts and a storm of 50 passes a
    limit of 10. Here each request is ONE ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
    (core/api/throttles.py): the row lock taken by the upsert orders concurrent
    requests for the same key, and the WHERE decides each one against the committed
    value. A bucket whose ``tat`` has passed means "full", the same as no row, so
    ``manage.py prune_idempotency_keys`` deletes it. The table is UNLOGGED (see its
    migration): losing it in a crash only forgives the requests counted so far.
    """

    key = models.TextField(_("key"), primary_key=True)  # "throttle_<scope>_<ident>"
    tat = models.DateTimeField(_("theoretical arrival time"))  # at most one period ahead of now

    objects = ThrottleBucketManager()

    class Meta:
        verbose_name = _("throttle bucket")
        verbose_name_plural = _("throttle buckets")

    def __str__(self):
        return self.key


# A claim older than this is no send in flight (EMAIL_TIMEOUT is seconds): its worker died, or met its row busy.
SENDING_LEFT_AFTER = timedelta(minutes=10)


class NotificationManager(models.Manager):
    @guarded(joins=True)
    def owe(self, kind, *, subject, recipients, language, context):
        """Record an e-mail owed for an event and queue its sending, in the caller's transaction.

        Locks: none (one INSERT … ON CONFLICT DO NOTHING on the (kind, subject) key; a concurrent
        twin waits for the first to commit, then inserts nothing).

        Called by the state change that causes it, so both commit or neither does: a crash never
        loses a notification, and the unique (kind, subject) never sends one event twice. The row
        and its ``send_notification`` job are one statement (``core.tasks.job_to_defer``): a job
        only for a row inserted. Returns the new row's id, or None when this event was already
        recorded.
        """
        insert, params, job_sql, job_params = self._owing(kind, subject, recipients, language, context)
        with connections[self.db].cursor() as cursor:
            statement = f"WITH owed AS ({insert}) SELECT owed.id, {job_sql} FROM owed"  # noqa: S608 - no value in it
            cursor.execute(statement, [*params, *job_params])
            row = cursor.fetchone()
        return None if row is None else row[0]

    @guarded(statement=True)
    def owe_if(self, event, kind, *, subject, recipients, language, context):
        """Send ``event`` and, only if it returned a row, record and queue this e-mail: one statement.

        Locks: those ``event`` takes (a filtered UPDATE's row lock, say); none of its own (as ``owe``).

        ``event``: (SQL, parameters) of a data-modifying statement with RETURNING, the state
        change the e-mail tells of. Both happen or neither, inside the caller's transaction or
        without one. Returns (the rows ``event`` returned, the new notification's id or None).
        """
        sql, params = self.owe_if_statement(
            event, kind, subject=subject, recipients=recipients, language=language, context=context
        )
        connection = connections[self.db]
        with connection.cursor() as cursor:
            execute_carrying_timeouts(cursor, sql, params)
            happened, notification_id, _jobs = cursor.fetchone()
        return happened, notification_id

    def owe_if_statement(self, event, kind, *, subject, recipients, language, context):
        """The SQL and parameters of ``owe_if`` (bench/ sends the same statement through pgbench)."""
        event_sql, event_params = event
        insert, params, job_sql, job_params = self._owing(kind, subject, recipients, language, context, "event")
        return (
            f"WITH event AS ({event_sql}), owed AS ({insert}) "  # noqa: S608 - every value a parameter
            f"SELECT (SELECT count(*) FROM event), (SELECT owed.id FROM owed), (SELECT {job_sql} FROM owed)",
            [*event_params, *params, *job_params],
        )

    def _owing(self, kind, subject, recipients, language, context, source=None):
        """The INSERT of an owed e-mail (one row, or one per row of the CTE ``source``) and its
        parameters, then the SQL queueing its job for ``owed.id`` and that SQL's parameters."""
        from core.tasks import job_to_defer, send_notification  # the worker's tasks import this module

        values = "%s, %s, %s, %s, %s, %s, 0, '', clock_timestamp()"
        rows = f"VALUES ({values})" if source is None else f"SELECT {values} FROM {source}"  # noqa: S608 - a CTE's name
        insert = (
            f"INSERT INTO {self.model._meta.db_table} (kind, subject, recipients, language,"
            f" context, status, attempts, last_error, created_at) {rows}"
            " ON CONFLICT (kind, subject) DO NOTHING RETURNING id"
        )
        params = [
            kind,
            subject,
            json.dumps(recipients),
            language,
            json.dumps(context, cls=DjangoJSONEncoder),
            NotificationStatus.PENDING,
        ]
        return (insert, params, *job_to_defer(send_notification, "jsonb_build_object('notification_id', owed.id)"))

    @guarded
    def claim(self, pk):
        """Take a pending notification for sending: ``pending`` -> ``sending``; return it, or None.

        Locks: the notification row (a filtered UPDATE). Committed before the mail server is
        called, so a second worker (a retried job) finds it taken and sends nothing: at most once.
        """
        if not self.filter(pk=pk, status=self.model.Status.PENDING).update(
            status=self.model.Status.SENDING, attempts=F("attempts") + 1, claimed_at=ClockNow()
        ):
            return None
        return self.get(pk=pk)

    @guarded
    def send_again(self, pk):
        """Queue again a notification left ``sending`` (its worker died between the claim and the mail server's
        answer, or a refusal met its row busy): ``sending`` -> ``pending`` and a new send job, in one
        transaction; return whether it was. An operator's call, after the mail log: the mail server may have
        taken it before the worker died, and it would then arrive twice.

        Locks: the notification row (a filtered UPDATE), then the job's row.

        Only a claim older than ``SENDING_LEFT_AFTER``, judged by the database clock on the row it
        changes: a send in flight (``EMAIL_TIMEOUT`` is seconds) is never taken from its worker.
        """
        from core.tasks import send_notification  # the worker's tasks import this module

        left = self.filter(
            pk=pk, status=self.model.Status.SENDING, claimed_at__lt=ClockNow() - SENDING_LEFT_AFTER
        ).update(status=self.model.Status.PENDING, last_error="left sending; queued again by an operator")
        if left:
            send_notification.defer(notification_id=pk)
        return bool(left)

    @guarded
    def queue_again(self, pk):
        """Queue another send job for a notification still ``pending`` whose own job is gone (a job given up on
        by a release before the row counted its attempts, a queue emptied by hand); return whether one was
        queued. A second job for a row that has one is harmless: the claim sends it at most once.

        Locks: none (a read, then the job's row, in one transaction).
        """
        from core.tasks import send_notification  # the worker's tasks import this module

        if not self.filter(pk=pk, status=self.model.Status.PENDING).exists():
            return False
        send_notification.defer(notification_id=pk)
        return True

    @guarded
    def mark_sent(self, pk):
        """``sending`` -> ``sent``, stamped by the database clock.

        Locks: the notification row (a filtered UPDATE).
        """
        return self.filter(pk=pk, status=self.model.Status.SENDING).update(
            status=self.model.Status.SENT, sent_at=ClockNow()
        )

    @guarded
    def release(self, pk, *, error, final):
        """The mail server refused: back to ``pending`` for the job's retry, or ``failed`` after the last.

        Locks: the notification row (a filtered UPDATE).
        """
        Status = self.model.Status
        return self.filter(pk=pk, status=Status.SENDING).update(
            status=Status.FAILED if final else Status.PENDING, last_error=error[:500]
        )

    @guarded
    def take_back(self, kind, *, subject):
        """Withdraw the notice of an event that turned out untrue (a refund the provider failed after it
        succeeded); return the status it had, or None when there is no such notice.

        Locks: the notification row FOR UPDATE (what the worker's claim waits for), then a filtered UPDATE.

        One not yet sent (``pending``) or being sent (``sending``) becomes ``superseded``: no retry of
        its job sends it later, after the news that contradicts it. One being sent may still go out.
        """
        Status = self.model.Status
        notice = self.filter(kind=kind, subject=subject).select_for_update()
        was = notice.values_list("status", flat=True).first()
        if was in (Status.PENDING, Status.SENDING):
            notice.filter(status=was).update(status=Status.SUPERSEDED)
        return was


class NotificationStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    SENDING = "sending", _("sending")
    SENT = "sent", _("sent")
    FAILED = "failed", _("failed")
    SUPERSEDED = "superseded", _("superseded")


NOTIFICATION_TRANSITIONS = [
    (None, NotificationStatus.PENDING),  # owed (Notification.objects.owe)
    (NotificationStatus.PENDING, NotificationStatus.SENDING),  # a worker claims it (claim)
    (NotificationStatus.SENDING, NotificationStatus.SENT),  # the mail server took it (mark_sent)
    (NotificationStatus.SENDING, NotificationStatus.PENDING),  # the mail server refused; the job retries (release)
    (NotificationStatus.SENDING, NotificationStatus.FAILED),  # refused on the last attempt (release)
    (NotificationStatus.PENDING, NotificationStatus.SUPERSEDED),  # its news turned out untrue (take_back)
    (NotificationStatus.SENDING, NotificationStatus.SUPERSEDED),  # the same, while it was being sent
]


class Notification(models.Model):
    """An e-mail Lockstep owes someone because something happened (a hold, a payment, a refund…).

    Recorded in the transaction of the event, sent by the worker. ``(kind, subject)`` is
    unique — "the confirmation of booking 12" — so an event is told at most once; a row stuck in
    ``sending`` (the worker died mid-send) is left for an operator rather than risk a second mail.
    """

    Status = NotificationStatus

    kind = models.CharField(_("kind"), max_length=40)
    subject = models.CharField(_("about"), max_length=100)  # "booking:12"
    recipients = models.JSONField(_("recipients"))  # a list of addresses
    language = models.CharField(_("language"), max_length=8)
    context = models.JSONField(_("context"), default=dict)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)
    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)  # by a worker, to send it

    objects = NotificationManager()

    class Meta:
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")
        constraints = [models.UniqueConstraint(fields=["kind", "subject"], name="notification_once_per_event")]
        # the few rows being sent: what the left-sending gauge counts at every scrape (core.metrics)
        indexes = [models.Index(fields=["claimed_at"], condition=Q(status="sending"), name="notification_sending")]
        triggers = [
            StateMachine(name="notification_status_transition", field="status", transitions=NOTIFICATION_TRANSITIONS)
        ]

    def __str__(self):
        return f"{self.kind} {self.subject}"
