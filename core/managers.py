from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from core.db import LockNamespace, delete_skipping_locked, try_advisory_xact_lock
from core.exceptions import IdempotencyKeyInProgress, IdempotencyKeyReused
from core.guards import ClockNow, guarded, sweep


def effective_status(open_statuses, expired):
    """A row's ``status`` as its readers see it: one still in ``open_statuses`` past its ``expires_at``, by the
    database clock, reads ``expired`` (lazy expiry: the sweep writes it later; every guard judges the clock)."""
    return models.Case(
        models.When(status__in=open_statuses, expires_at__lte=ClockNow(), then=models.Value(expired)),
        default=models.F("status"),
        output_field=models.CharField(),
    )


class TenantScopedQuerySet(models.QuerySet):
    """Rows that belong to one tenant: the base of every tenant-owned model's queryset.

    ``tenant_field`` is the lookup path from the row to its tenant: ``"tenant"`` for a
    model with its own tenant column, or a path through a relation (``"promo__tenant"``)
    for one that reaches its tenant through another row.
    """

    tenant_field = "tenant"

    def for_tenant(self, tenant):
        """Only ``tenant``'s rows (a Tenant or its id)."""
        return self.filter(**{self.tenant_field: tenant})


class IdempotencyKeyManager(models.Manager):
    @guarded(joins=True)
    def claim(self, *, principal, key, method, path, fingerprint):
        """Claim ``key`` for this request, or return the completed record to replay.

        Locks: IDEMPOTENCY_KEY(principal, key) advisory try-lock (busy -> in progress, at once); to take over
        a stale two-phase claim, its row (a filtered UPDATE that waits for a late attempt's complete or release).

        Must run inside the transaction that does the work, so the record and the
        work commit (or vanish) together. A transaction-scoped advisory try-lock on
        (principal, key) decides between concurrent requests with the same key: the
        loser gets IdempotencyKeyInProgress at once instead of waiting. Raises
        IdempotencyKeyReused when the key was used for a different request.
        Returns ``(record, replay)``: replay is True when the record holds an answer.
        """
        if not try_advisory_xact_lock(LockNamespace.IDEMPOTENCY_KEY, principal, key, using=self.db):
            raise IdempotencyKeyInProgress()
        record = self.filter(principal=principal, key=key, expires_at__gt=Now()).first()
        if record is not None:
            if record.fingerprint != fingerprint:
                raise IdempotencyKeyReused()
            if record.state == record.State.COMPLETED:
                return record, True
            # In progress and committed: a two-phase request is calling out, or crashed. Taken over by one
            # filtered UPDATE, still in progress and stale judged on the row it changes: a late attempt that
            # stores its answer (or frees the key) meanwhile holds the row, and the UPDATE then sees that.
            stale = self.filter(
                pk=record.pk,
                state=record.State.IN_PROGRESS,
                created_at__lt=Now() - settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT,
            )
            if stale.update(created_at=Now(), expires_at=Now() + settings.IDEMPOTENCY_KEY_TTL):
                record.refresh_from_db(fields=["created_at", "expires_at"])  # this claim's mark (complete, release)
                return record, False
            record = self.filter(pk=record.pk).first()
            if record is not None:
                if record.state == record.State.COMPLETED:
                    return record, True
                raise IdempotencyKeyInProgress()
        self.filter(principal=principal, key=key).delete()  # an expired record frees its key
        record = self.create(
            principal=principal,
            key=key,
            method=method,
            path=path,
            fingerprint=fingerprint,
            expires_at=Now() + settings.IDEMPOTENCY_KEY_TTL,  # created_at: the database's default, the same clock
        )
        return record, False

    @guarded(joins=True)
    def complete(self, record, *, status, body):
        """Store the answer to replay; part of the caller's transaction.

        Locks: the record's row (a filtered UPDATE), already claimed under the key's advisory lock.

        Only while the claim is still this one (its ``created_at``): a two-phase attempt that outlived
        IDEMPOTENCY_IN_PROGRESS_TIMEOUT, its key taken over by a retry, stores nothing over the retry's.
        """
        self.claimed(record).update(state=self.model.State.COMPLETED, response_status=status, response_body=body)
        record.state, record.response_status, record.response_body = self.model.State.COMPLETED, status, body

    @guarded
    def release(self, record):
        """Free the key of a two-phase claim whose answer is not kept (5xx, lock contention).

        Locks: the record's row (one DELETE), only while the claim is still this one: a stale attempt
        never frees the key under a retry that took it over (a third request would run the work too).
        """
        self.claimed(record).delete()

    @guarded
    def keep_for_resume(self, record):
        """Free the key of a two-phase claim whose answer is not kept (a 5xx, lock contention) though its work
        committed (noted): the next request with the key takes it over at once and resumes that work, as
        after a crash, instead of doing it again (``release`` would forget it).

        Locks: the record's row (a filtered UPDATE), only while the claim is still this one.
        """
        stale = Now() - settings.IDEMPOTENCY_IN_PROGRESS_TIMEOUT - timedelta(seconds=1)
        self.claimed(record).update(created_at=stale)

    @guarded(joins=True)
    def note_work(self, record, work_id):
        """Note on a two-phase claim the row its work made or changed; part of the transaction committing that work.

        Locks: the record's row (a filtered UPDATE), only while the claim is still this one.
        """
        self.claimed(record).update(work_id=work_id)
        record.work_id = work_id

    def claimed(self, record):
        """The record while ``record``'s claim holds it: same row, not taken over since (``created_at``)."""
        return self.filter(pk=record.pk, created_at=record.created_at)

    @sweep
    def prune(self, *, batch=1000):
        """Delete expired records; return how many went.

        Locks: each expired record's row, a batch at a time (``core.db.delete_skipping_locked``; a row
        a request holds, reclaiming its key, is skipped for the next run).
        """
        return delete_skipping_locked(self.filter(expires_at__lte=Now()), batch=batch)
