"""Guarded operations on proposals: every state change is one filtered UPDATE."""

from django.db import connections, models, transaction
from django.db.models import BooleanField, Case, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Now

from bookings.exceptions import DateInPast
from bookings.models import Booking, Checkout
from core.guards import database_clock
from proposals.exceptions import ProposalAlreadyProcessed, ProposalExpired, ProposalNotFound


def _require_atomic(using):
    if not connections[using].in_atomic_block:
        raise RuntimeError("This operation must run inside the caller's transaction.atomic().")


class ProposalQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def pending(self):
        return self.filter(status=self.model.Status.PENDING)

    def live(self):
        """Pending and not yet expired by the database clock: the only proposals that can be decided."""
        return self.pending().filter(expires_at__gt=Now())

    def lapsed(self):
        """Pending but past expiry: expired in all but name until the sweep runs."""
        return self.pending().filter(expires_at__lte=Now())

    def with_effective_status(self):
        """Annotate ``effective_status``: a lapsed pending proposal reads as expired (lazy expiry)."""
        Status = self.model.Status
        return self.annotate(
            effective_status=Case(
                When(status=Status.PENDING, expires_at__lte=Now(), then=Value(Status.EXPIRED)),
                default=F("status"),
                output_field=models.CharField(),
            )
        )


class ProposalManager(models.Manager.from_queryset(ProposalQuerySet)):
    def propose(self, *, tenant, session_id, package, date, customer_name, customer_email, expires_in):
        """Create a pending proposal expiring ``expires_in`` (a timedelta) after the database's now.

        Raises DateInPast for a date before the database's today (it could never be booked).
        """
        with transaction.atomic(using=self.db):
            if date < database_clock(using=self.db).date():
                raise DateInPast(date=date.isoformat())
            proposal = self.create(
                tenant=tenant,
                session_id=session_id,
                package=package,
                date=date,
                customer_name=customer_name,
                customer_email=customer_email,
                status=self.model.Status.PENDING,
                expires_at=Now() + expires_in,
                created_at=Now(),
            )
            proposal.refresh_from_db(fields=["expires_at", "created_at"])
            return proposal

    propose.alters_data = True

    def _decide(self, proposal_id, *, tenant, session_id, **changes):
        won = self.filter(
            pk=proposal_id,
            tenant=tenant,
            session_id=session_id,
            status=self.model.Status.PENDING,
            expires_at__gt=Now(),
        ).update(**changes)
        if not won:
            raise self._refusal(proposal_id, tenant=tenant, session_id=session_id)

    def confirm(self, proposal_id, *, tenant, session_id):
        """Move a pending proposal to confirmed, exactly once.

        One filtered UPDATE decides the race (status, owner, session and expiry
        by the database clock are all in its WHERE); its row lock makes a
        concurrent confirm or reject wait and then match 0 rows. On 0 rows, one
        read names the refusal: ProposalNotFound, ProposalExpired or
        ProposalAlreadyProcessed.
        """
        with transaction.atomic(using=self.db):
            self._decide(
                proposal_id, tenant=tenant, session_id=session_id,
                status=self.model.Status.CONFIRMED, confirmed_at=Now(),
            )
            return self.select_related("package").get(pk=proposal_id)

    confirm.alters_data = True

    def reject(self, proposal_id, *, tenant, session_id):
        """Move a pending proposal to rejected, exactly once; refusals as for ``confirm``."""
        with transaction.atomic(using=self.db):
            self._decide(
                proposal_id, tenant=tenant, session_id=session_id,
                status=self.model.Status.REJECTED, rejected_at=Now(),
            )
            return self.get(pk=proposal_id)

    reject.alters_data = True

    def execute(self, proposal_id, *, booking):
        """Record the booking a confirmed proposal produced: ``confirmed`` -> ``executed``.

        Must run inside the confirming transaction (asserted), so the decision,
        the booking and this link commit together. A proposal that is not
        ``confirmed`` raises ProposalAlreadyProcessed (the filtered UPDATE matched nothing).
        """
        _require_atomic(self.db)
        if not self.filter(pk=proposal_id, status=self.model.Status.CONFIRMED).update(
            status=self.model.Status.EXECUTED, booking=booking, executed_at=Now()
        ):
            raise ProposalAlreadyProcessed()

    execute.alters_data = True

    def reopen(self, proposal_id, *, booking_id):
        """Undo an execution whose payment checkout could not be opened: ``executed`` -> ``pending``.

        The provider refused after commit and the booking's hold was released, so
        nothing was charged; unlinking that booking lets the customer confirm again.
        One filtered UPDATE (status and this booking in its WHERE); returns whether it matched.
        """
        with transaction.atomic(using=self.db):
            return bool(
                self.filter(pk=proposal_id, status=self.model.Status.EXECUTED, booking_id=booking_id).update(
                    status=self.model.Status.PENDING, booking=None, confirmed_at=None, executed_at=None
                )
            )

    reopen.alters_data = True

    def reopen_stranded(self):
        """Sweep: reopen executed proposals whose checkout never opened and whose hold is gone.

        The confirming process died between its commit and the provider's answer (or
        before storing a refusal's reopen): the customer never got a checkout URL and the
        hold has lapsed, so nothing can be paid. One UPDATE (executed -> pending,
        booking unlinked); returns how many.
        """
        lapsed = Q(booking__status=Booking.Status.EXPIRED) | Q(
            booking__status=Booking.Status.HELD, booking__hold_expires_at__lte=Now()
        )
        with transaction.atomic(using=self.db):
            return (
                self.filter(status=self.model.Status.EXECUTED,
                            booking__checkout__state__in=[Checkout.State.CREATING, Checkout.State.FAILED])
                .filter(lapsed)
                .update(status=self.model.Status.PENDING, booking=None, confirmed_at=None, executed_at=None)
            )

    reopen_stranded.alters_data = True

    def fail(self, proposal_id, *, code):
        """A confirmed proposal could not be booked: ``confirmed`` -> ``failed`` with the refusal's code.

        Must run inside the confirming transaction (asserted).
        """
        _require_atomic(self.db)
        if not self.filter(pk=proposal_id, status=self.model.Status.CONFIRMED).update(
            status=self.model.Status.FAILED, failure_code=code
        ):
            raise ProposalAlreadyProcessed()

    fail.alters_data = True

    def expire(self, proposal_id):
        """Operator action: expire a pending proposal now (whatever its expiry); refusals as for ``confirm``."""
        with transaction.atomic(using=self.db):
            if not self.filter(pk=proposal_id, status=self.model.Status.PENDING).update(
                status=self.model.Status.EXPIRED, expires_at=Now()
            ):
                raise ProposalNotFound() if not self.filter(pk=proposal_id).exists() else ProposalAlreadyProcessed()

    expire.alters_data = True

    def expire_due(self):
        """Sweep: mark pending proposals past their expiry ``expired``; return how many."""
        with transaction.atomic(using=self.db):
            return self.lapsed().update(status=self.model.Status.EXPIRED)

    expire_due.alters_data = True

    def _refusal(self, proposal_id, *, tenant, session_id):
        row = (
            self.filter(pk=proposal_id, tenant=tenant, session_id=session_id)
            .annotate(lapsed=ExpressionWrapper(Q(expires_at__lte=Now()), output_field=BooleanField()))
            .values_list("status", "lapsed")
            .first()
        )
        if row is None:
            return ProposalNotFound()
        status, lapsed = row
        if status == self.model.Status.EXPIRED or (status == self.model.Status.PENDING and lapsed):
            return ProposalExpired()
        return ProposalAlreadyProcessed()

