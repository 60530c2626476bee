"""Guarded operations on proposals (the guard contract: core/guards.py).

Lock order, everywhere (the global order of docs/architecture.md):

    proposal row
    -> BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date)   (taken by Booking.objects.hold)
    -> booking row -> checkout row

Nothing here takes a booking or checkout row lock and then a proposal row lock; the
sweeps handle one proposal per transaction, so a sweep never holds one proposal's
booking while waiting for another proposal. Every guard judging expiry uses
``ClockNow()`` (``clock_timestamp()``: the clock when the row is judged, after any lock
wait), never ``Now()`` (``STATEMENT_TIMESTAMP()``, fixed before the wait). Decision
timestamps (``confirmed_at``, ``executed_at``…) are that same clock, read when the row was judged.
"""

import logging

from django.db import connections, models
from django.db.models import BooleanField, ExpressionWrapper, F, Q
from django.db.models.functions import Least, Now

from bookings.choices import CheckoutState
from bookings.exceptions import DateInPast, PackageNotFound
from bookings.managers import lock_package_shared
from bookings.models import Booking, Checkout, Package
from core import rows
from core.db import update_skipping_locked
from core.decide import NOW, Decision
from core.exceptions import DomainError
from core.guards import ClockNow, SweepResult, guarded, sweep, tenant_today
from core.managers import TenantScopedQuerySet, effective_status
from core.prepared import update_statement
from core.versioned_edit import edit_at_version, refuse_unknown_fields
from proposals.choices import ProposalStatus
from proposals.exceptions import ProposalAlreadyProcessed, ProposalExpired, ProposalNotFound

logger = logging.getLogger(__name__)

# What a reopen unlinks: the proposal is pending again, as if never confirmed.
REOPENED = dict(status=ProposalStatus.PENDING, booking=None, confirmed_at=None, executed_at=None)


# A stranded proposal's checkout never reached the customer: nothing can be paid through it. Still being
# created, refused by the provider, or recorded expired with no URL (the provider answered after the hold
# ended: create_provider_checkout closed that session, the customer never saw it).
def never_opened(prefix=""):
    return Q(**{f"{prefix}state__in": (CheckoutState.CREATING, CheckoutState.FAILED)}) | Q(
        **{f"{prefix}state": CheckoutState.EXPIRED, f"{prefix}url": ""}
    )


# What each decision records beside the new status: when it was taken (the clock when the row was judged).
DECIDED_AT = {ProposalStatus.CONFIRMED: "confirmed_at", ProposalStatus.REJECTED: "rejected_at"}


class ProposalQuerySet(TenantScopedQuerySet):
    def pending(self):
        return self.filter(status=self.model.Status.PENDING)

    def live(self):
        """Pending and not yet expired by the database clock: the only proposals that can be decided."""
        return self.pending().filter(expires_at__gt=ClockNow())

    def lapsed(self):
        """Pending but past expiry: expired in all but name until the sweep runs."""
        return self.pending().filter(expires_at__lte=ClockNow())

    def stranded(self):
        """Candidates for ``reopen_stranded``: executed, checkout never opened, hold gone.

        A plain read, stale the moment it returns: each candidate is judged again on its
        locked rows by ``reopen_if_stranded`` before anything is written.
        """
        return (
            self.filter(status=self.model.Status.EXECUTED)
            .filter(never_opened("booking__checkout__"))
            .filter(
                Q(booking__status=Booking.Status.EXPIRED)
                | Q(booking__status=Booking.Status.HELD, booking__hold_expires_at__lte=ClockNow())
            )
        )

    def with_effective_status(self):
        """Annotate ``effective_status``: a lapsed pending proposal reads as expired (lazy expiry)."""
        Status = self.model.Status
        return self.annotate(effective_status=effective_status([Status.PENDING], Status.EXPIRED))


class ProposalManager(models.Manager.from_queryset(ProposalQuerySet)):
    @guarded
    def propose(self, *, tenant, session_id, package, date, customer_name, customer_email, expires_in):
        """Create a pending proposal expiring ``expires_in`` (a timedelta) after the database's now.

        Locks: BOOKING_PACKAGE(package) shared, then the package is read again: a package
        delete or deactivation waits for this insert, or this sees it and refuses (never a
        foreign key failing at commit).

        Raises PackageNotFound (gone, inactive or another tenant's), DateInPast for a date
        before the shop's today (the database clock in the tenant's time zone: it could never be booked).
        """
        lock_package_shared(package.pk, using=self.db)
        if not Package.objects.using(self.db).for_tenant(tenant).active().filter(pk=package.pk).exists():
            raise PackageNotFound()
        if date < tenant_today(tenant, using=self.db):
            raise DateInPast(date=date.isoformat())
        proposal = self.create(
            tenant=tenant,
            session_id=session_id,
            package=package,
            date=date,
            customer_name=customer_name,
            customer_email=customer_email,
            expires_at=Now() + expires_in,
        )
        # expires_at is an expression until read back; created_at (a db_default) came back with the INSERT.
        proposal.refresh_from_db(fields=["expires_at"])
        return proposal

    def decision(self, proposal_id, decision, *, tenant, session_id):
        """What deciding a proposal locks, requires and writes: ``core.decide``'s arguments.

        A pending, unexpired proposal of this tenant and session moves to ``decision``,
        stamped in DECIDED_AT by the database clock read after any lock wait.
        """
        return {
            "queryset": self.filter(pk=proposal_id, tenant=tenant, session_id=session_id),
            "when": Q(status=self.model.Status.PENDING, expires_at__gt=ClockNow()),
            "changes": {"status": decision, DECIDED_AT[decision]: NOW},
        }

    decided = Decision(decision, proposal_id=int, tenant=int, session_id=str)

    def _decide(self, proposal_id, decision, *, tenant, session_id):
        """Run the decision in one statement (core.decide); a refusal is named from the row that refused it."""
        won, proposal = self.decided(
            self, proposal_id=proposal_id, decision=decision, tenant=tenant, session_id=session_id
        )
        if not won:
            raise self._refusal(proposal)
        return proposal

    @guarded(statement=True)
    def confirm(self, proposal_id, *, tenant, session_id):
        """Move a pending proposal to confirmed, exactly once; return it.

        Locks: proposal row (FOR NO KEY UPDATE in the deciding statement; waits up to lock_timeout).

        One statement decides the race (status, owner, session and expiry by the database
        clock *after any lock wait*) and returns the row: a concurrent confirm or reject
        waits for the row lock and then reads the decided row. Refusals: ProposalNotFound,
        ProposalExpired or ProposalAlreadyProcessed.
        """
        return self._decide(proposal_id, self.model.Status.CONFIRMED, tenant=tenant, session_id=session_id)

    @guarded(statement=True)
    def reject(self, proposal_id, *, tenant, session_id):
        """Move a pending proposal to rejected, exactly once; refusals as for ``confirm``.

        Locks: proposal row (FOR NO KEY UPDATE in the deciding statement).
        """
        return self._decide(proposal_id, self.model.Status.REJECTED, tenant=tenant, session_id=session_id)

    def execution(self, db, values, booking_id):
        """``confirmed`` -> ``executed`` for the hold's origin proposal, linking the booking that hold makes:
        (SQL, parameters) of a write of the hold's own statement (``Booking.objects.hold``'s ``then``),
        returning the proposal's row. ``booking_id``: the SQL of the new booking's id."""
        proposals = self.db_manager(db)
        sql, params = update_statement(
            proposals.filter(pk=values["origin_proposal_id"], status=self.model.Status.CONFIRMED),
            status=self.model.Status.EXECUTED,
            booking=booking_id,
            executed_at=ClockNow(),
        )
        quote = connections[db].ops.quote_name
        return f"{sql} RETURNING {rows.columns(self.model, quote(self.model._meta.db_table), quote)}", params

    @guarded(joins=True)
    def execute(self, proposal_id, *, hold):
        """Book a confirmed proposal and record that booking: ``confirmed`` -> ``executed``; return (proposal, booking).

        Locks: proposal row (already held by the confirming transaction's UPDATE), then the hold's:
        BOOKING_PACKAGE(package) shared -> BOOKING_DATE(package, date) -> the new booking and checkout rows.

        Joins the confirming transaction (asserted). ``hold(origin_proposal_id=, then=)`` makes the
        booking (``bookings.services.hold_in_transaction`` with its terms), and its statement also
        writes the execution (``execution``), returning the executed row, so the booking and this link
        are one round trip and nobody reads them again. The hold's refusals propagate, before anything
        is written. A proposal that is not ``confirmed`` raises ProposalAlreadyProcessed (the caller's
        transaction, with the booking, rolls back).
        """
        booking = hold(origin_proposal_id=proposal_id, then=self.execution)
        if booking.followed[0] is None:  # the UPDATE matched nothing: every returned column NULL
            raise ProposalAlreadyProcessed()
        connection = connections[self.db]
        return rows.load(self.model, booking.followed, connection, self.db), booking

    @guarded(joins=True)
    def fail(self, proposal_id, *, code):
        """A confirmed proposal could not be booked: ``confirmed`` -> ``failed`` with the refusal's code.

        Locks: proposal row (already held by the confirming transaction's UPDATE).

        Joins the confirming transaction (asserted); ProposalAlreadyProcessed if not confirmed.
        """
        if not self.filter(pk=proposal_id, status=self.model.Status.CONFIRMED).update(
            status=self.model.Status.FAILED, failure_code=code
        ):
            raise ProposalAlreadyProcessed()

    @guarded
    def reopen(self, proposal_id, *, booking_id):
        """Undo an execution whose payment checkout could not be opened: ``executed`` -> ``pending``.

        Locks: proposal row (the filtered UPDATE), then the booking row and its checkout
        row FOR SHARE (the proposal_booking_unlink_transition trigger).

        The provider refused after commit and the booking's hold was released, so
        nothing was charged; unlinking that booking lets the customer confirm again.
        One filtered UPDATE: status *and this booking* in its WHERE, so a late reopen
        never unlinks a booking a re-confirmation made meanwhile (it matches 0 rows).
        The database refuses to unlink a booking that is live or paid (TransitionRefused).
        Returns whether it matched.
        """
        return bool(
            self.filter(pk=proposal_id, status=self.model.Status.EXECUTED, booking_id=booking_id).update(**REOPENED)
        )

    @guarded
    def reopen_if_stranded(self, proposal_id, *, booking_id):
        """Reopen one executed proposal whose checkout never opened and whose hold is gone; return whether it did.

        Locks: proposal row FOR NO KEY UPDATE, then its booking row FOR SHARE, then that
        booking's checkout row FOR SHARE (the global order), each waiting up to lock_timeout.

        Every condition is judged on the locked rows, after the locks are held, with the
        clock at that moment: the proposal is still ``executed`` and still linked to
        ``booking_id`` (the candidate the sweep saw: a re-confirmation meanwhile linked
        another booking, which is left alone); the booking is ``expired``, or ``held``
        with a lapsed hold; the checkout never opened (``never_opened``: no customer
        ever got a URL to pay). Then the same UPDATE as ``reopen``. A lock held past
        lock_timeout raises LockContended.
        """
        Status = self.model.Status
        proposal = self.select_for_update(no_key=True).filter(pk=proposal_id).values("status", "booking_id").first()
        if proposal is None or proposal["status"] != Status.EXECUTED or proposal["booking_id"] != booking_id:
            return False
        gone = (
            Booking.objects.using(self.db)
            .filter(pk=booking_id)
            .annotate(
                gone=ExpressionWrapper(
                    Q(status=Booking.Status.EXPIRED) | Q(status=Booking.Status.HELD, hold_expires_at__lte=ClockNow()),
                    output_field=BooleanField(),
                )
            )
        )
        booking_gone = _first_for_share(gone, "gone")
        if not booking_gone:
            return False
        unopened = Checkout.objects.using(self.db).filter(booking_id=booking_id)
        unopened = unopened.annotate(never=ExpressionWrapper(never_opened(), output_field=BooleanField()))
        if not _first_for_share(unopened, "never"):
            return False
        # The proposal row is locked and was judged above (executed, this booking): no condition to repeat.
        return bool(self.filter(pk=proposal_id).update(**REOPENED))

    @sweep
    def reopen_stranded(self):
        """Sweep: reopen executed proposals whose checkout never opened and whose hold is gone.

        Locks: per proposal, in its own transaction, what ``reopen_if_stranded`` takes
        (proposal row -> booking row -> checkout row); never two proposals' locks at once.

        The confirming process died between its commit and the provider's answer (or
        before storing a refusal's reopen): the customer never got a checkout URL and the
        hold has lapsed, so nothing can be paid. The candidates are read once (stale by
        design); each is judged again on its locked rows (no ``UPDATE … WHERE id IN
        (subquery)`` whose stale answer would be applied to a newer row version). A row
        busy past lock_timeout (or otherwise refused) is left for the next run.
        Returns a SweepResult (how many reopened, which were skipped and why).
        """
        result = SweepResult()
        candidates = list(self.stranded().order_by("pk").values_list("pk", "booking_id"))
        for proposal_id, booking_id in candidates:
            try:
                if self.reopen_if_stranded(proposal_id, booking_id=booking_id):
                    result.done += 1
            except DomainError as refusal:
                logger.warning("reopen_stranded: proposal %s left for the next run: %s", proposal_id, refusal)
                result.skipped.append((proposal_id, refusal))
        return result

    @guarded
    def expire(self, proposal_id):
        """Operator action: expire a pending proposal now (whatever its expiry); refusals as for ``confirm``.

        Locks: proposal row (the filtered UPDATE).
        """
        if not self.filter(pk=proposal_id, status=self.model.Status.PENDING).update(
            # when it ended: now, or when it lapsed if that was earlier (an expiry never moves later)
            status=self.model.Status.EXPIRED,
            expires_at=Least(F("expires_at"), Now()),
        ):
            raise ProposalNotFound() if not self.filter(pk=proposal_id).exists() else ProposalAlreadyProcessed()

    @sweep
    def expire_due(self):
        """Sweep: mark pending proposals past their expiry ``expired``; return how many.

        Locks: each matching proposal row, a batch at a time (``core.db.update_skipping_locked``: no
        other lock, so no order to keep; a row another transaction holds is skipped, never waited for).

        Both conditions are on the row being changed, judged as it is written, with the clock at that
        moment. A row a confirm holds is left for the next run, which finds it executed (left alone) or
        still lapsed; meanwhile every reader already takes it for expired (``effective_status``).
        """
        return update_skipping_locked(self.lapsed(), status=self.model.Status.EXPIRED)

    @guarded
    def edit_contact(self, proposal_id, *, version, **changes):
        """Write only the changed contact fields (customer_name, customer_email) of a proposal.

        Locks: proposal row FOR NO KEY UPDATE (waits up to lock_timeout; no other lock).

        Refuses with VersionConflict when ``version`` is not the row's: a confirm, a
        reject, an expiry, a reopen or another edit that committed since the caller read
        the proposal bumped it (proposal_bump_version), so a form read before a
        confirmation is refused rather than editing details the booking was already made
        from. Status, booking and timestamps are never written here. Raises
        ProposalNotFound, VersionConflict; ValueError for a field that is not a contact field.
        """
        from proposals.models import PROPOSAL_EDITABLE

        refuse_unknown_fields(changes, PROPOSAL_EDITABLE, model="Proposal", edit="a contact edit")
        return edit_at_version(self.filter(pk=proposal_id), version=version, changes=changes, missing=ProposalNotFound)

    def _refusal(self, proposal):
        """The refusal a proposal that ``_decide`` did not move stands for (None: not found)."""
        if proposal is None:
            return ProposalNotFound()
        status = proposal.status
        if status == self.model.Status.EXPIRED or (
            status == self.model.Status.PENDING and proposal.expires_at <= proposal.judged_at
        ):
            return ProposalExpired()
        return ProposalAlreadyProcessed()


def _first_for_share(queryset, column):
    """``column`` of the first row of ``queryset``, that row locked FOR SHARE (None when there is none).

    Django's select_for_update offers FOR UPDATE and FOR NO KEY UPDATE only; reading a
    booking or checkout to judge it needs no more than FOR SHARE (it conflicts with
    every writer of that row, and not with other readers or the foreign-key checks).
    """
    sql, params = queryset.values_list(column, flat=True)[:1].query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"{sql} FOR SHARE", params)
        row = cursor.fetchone()
    return None if row is None else row[0]
