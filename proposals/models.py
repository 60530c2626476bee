import pgtrigger
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from core.history import tracked
from core.integrity import (
    BumpVersion,
    FrozenColumns,
    GuardedModel,
    NeverLater,
    SetOnce,
    StateMachine,
    VersionOnlyIncreases,
    refusal_sql,
    within,
)
from proposals.choices import ProposalStatus
from proposals.managers import ProposalManager

# What operators edit (Proposal.objects.edit_contact, the admin form).
PROPOSAL_EDITABLE = ("customer_name", "customer_email")
# A change of any of these bumps ``version``, whoever writes it: an admin form opened before a
# confirm, a reject or an expiry committed is stale (version_conflict) instead of editing a
# proposal whose booking was already made from the contact details the operator saw.
PROPOSAL_VERSIONED = (*PROPOSAL_EDITABLE, "status", "booking")
# What a proposal's record shows beside who proposed what: how and when it was decided (read-only to
# operators and API clients alike).
PROPOSAL_RECORD = ("status", "expires_at", "created_at", "confirmed_at", "executed_at", "rejected_at", "failure_code")


# The documented machine (docs/proposals.md); the database enforces it (proposal_status_transition).
PROPOSAL_TRANSITIONS = [
    (None, ProposalStatus.PENDING),  # the assistant proposes (propose)
    (ProposalStatus.PENDING, ProposalStatus.CONFIRMED),  # confirm (the filtered UPDATE that decides the race)
    (ProposalStatus.PENDING, ProposalStatus.REJECTED),  # reject
    (ProposalStatus.PENDING, ProposalStatus.EXPIRED),  # operator expire, expiry sweep
    (ProposalStatus.CONFIRMED, ProposalStatus.EXECUTED),  # the booking was held, in the confirming transaction
    (ProposalStatus.CONFIRMED, ProposalStatus.FAILED),  # the booking was refused, in the confirming transaction
    (ProposalStatus.EXECUTED, ProposalStatus.PENDING),  # reopen: the checkout never opened and nothing can be paid
]


class ProposalLinks(pgtrigger.Trigger):
    """Refuse, in the database, a proposal that points where it may not: made under another tenant than its
    package's (that shop's staff would list it, and a confirm would hold another shop's date), or linked to
    a booking that is not the one made for it: another shop's, another package's or date's, or a booking
    whose ``origin_proposal_id`` names another proposal (it would answer for a booking it never made, and
    the reopen sweep would judge the wrong booking). Only Python stopped either before.

    An AFTER trigger: a confirm inserts the booking and links the proposal to it in one statement, and only
    at that statement's end is the booking there to judge. One primary-key probe per proposal inserted, one
    per link made (a link never moves: ``proposal_booking_unlink_transition``). Raises SQLSTATE 23514 named
    ``proposal_links_transition`` (409 invalid_transition).
    """

    when = pgtrigger.After
    operation = pgtrigger.Insert | pgtrigger.UpdateOf("booking_id")

    def get_func(self, model):
        packages = model._meta.get_field("package").related_model._meta.db_table
        bookings = model._meta.get_field("booking").related_model._meta.db_table

        def refuse(old, new, why):
            message = f"format('%s: proposal %s {why}', TG_TABLE_NAME, NEW.\"id\")"
            return refusal_sql(self.name, f"'{old}->{new}'", message)

        return self.format_sql(
            f"""
            IF TG_OP = 'INSERT' AND NOT EXISTS (
                SELECT 1 FROM "{packages}" WHERE "id" = NEW."package_id" AND "tenant_id" = NEW."tenant_id"
            ) THEN {refuse("package", "proposal", "is not in the tenant of its package")} END IF;
            IF NEW."booking_id" IS NOT NULL AND (TG_OP = 'INSERT' OR OLD."booking_id" IS NULL) AND NOT EXISTS (
                SELECT 1 FROM "{bookings}" WHERE "id" = NEW."booking_id" AND "tenant_id" = NEW."tenant_id"
                AND "package_id" = NEW."package_id" AND "date" = NEW."date" AND "origin_proposal_id" = NEW."id"
            ) THEN {refuse("booking", "proposal", "is linked to a booking not made for it")} END IF;
            RETURN NULL;
            """  # noqa: S608 - identifiers from model meta, no values
        )


class ProposalBookingUnlink(pgtrigger.Trigger):
    """Refuse, in the database, unlinking a proposal from a booking that is live or was paid.

    A proposal leaves its booking only by a reopen (``executed -> pending``), which is
    legitimate only when nothing can be paid any more: the booking is ``expired``,
    ``cancelled`` or a ``held`` booking whose hold has lapsed (by ``clock_timestamp()``),
    and its checkout never opened (``creating``, ``failed``, ``expired``) with no refund
    under way. A confirmed, payment_pending, refund_pending or refunded booking, a live
    hold, or an open, processing or completed checkout keeps the link: unlinking it would let the proposal be
    confirmed again while the first booking can still be (or was) paid. A link never moves from one booking to
    another (an execution links, a reopen unlinks): a relinked proposal would answer for a booking of
    another date, or another shop, that it never made.

    The booking row, then the checkout row, are locked FOR SHARE (after the proposal row
    the UPDATE holds: the global lock order), so a payment settling that booking either
    committed before (and is seen) or waits until this transaction ends.
    Raises SQLSTATE 23514 with this trigger's name (ends in ``_transition``):
    core.guards maps it to TransitionRefused (409 ``invalid_transition``).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Update
    condition = pgtrigger.Condition(
        'OLD."booking_id" IS NOT NULL AND NEW."booking_id" IS DISTINCT FROM OLD."booking_id"'
    )
    declare = [
        ("v_booking_status", "text"),
        ("v_hold_expires", "timestamptz"),
        ("v_checkout_state", "text"),
        ("v_refund_state", "text"),
    ]

    def get_func(self, model):
        from bookings.models import Booking, Checkout

        refuse = refusal_sql(
            self.name,
            'format(\'%s with booking %s %s/%s->%s\', OLD."status", OLD."booking_id", v_booking_status, '
            "coalesce(v_checkout_state, 'no checkout'), NEW.\"status\")",
            "format('%s: proposal %s may not leave booking %s (%s, checkout %s): it is live or was paid', "
            'TG_TABLE_NAME, OLD."id", OLD."booking_id", v_booking_status, coalesce(v_checkout_state, \'none\'))',
        )
        refuse_move = refusal_sql(
            self.name,
            'format(\'booking %s->booking %s\', OLD."booking_id", NEW."booking_id")',
            "format('%s: proposal %s may not move from booking %s to booking %s: a link never moves', "
            'TG_TABLE_NAME, OLD."id", OLD."booking_id", NEW."booking_id")',
        )
        return self.format_sql(
            f"""
            IF NEW."booking_id" IS NOT NULL THEN {refuse_move} END IF;
            SELECT "status", "hold_expires_at" INTO v_booking_status, v_hold_expires
              FROM "{Booking._meta.db_table}" WHERE "id" = OLD."booking_id" FOR SHARE;
            SELECT "state", "refund_state" INTO v_checkout_state, v_refund_state
              FROM "{Checkout._meta.db_table}" WHERE "booking_id" = OLD."booking_id" FOR SHARE;
            IF v_booking_status IN ('confirmed', 'payment_pending', 'refund_pending', 'refunded')
               OR (v_booking_status = 'held' AND v_hold_expires > clock_timestamp())
               OR coalesce(v_checkout_state IN ('open', 'processing', 'completed'), false)
               OR coalesce(v_refund_state <> '', false) THEN
                {refuse}
            END IF;
            RETURN NEW;
            """  # noqa: S608 - trigger SQL from _meta names, installed by the migration
        )


@tracked()
class Proposal(GuardedModel):
    """A booking an assistant proposed in a chat session; confirmed (and executed) at most once.

    Status, the booking link, the decision timestamps, expiry and what was proposed
    (tenant, session, package, date) change only through the manager's guarded
    operations; the customer's contact details through ``edit_contact`` (version-checked).
    """

    Status = ProposalStatus

    guarded_fields = (
        "status",
        "booking",
        "booking_id",
        "confirmed_at",
        "executed_at",
        "rejected_at",
        "expires_at",
        "failure_code",
        "package",
        "package_id",
        "date",
        "session_id",
        "tenant",
        "tenant_id",
        "version",
    )

    tenant = models.ForeignKey(
        "core.Tenant", on_delete=models.CASCADE, related_name="proposals", verbose_name=_("tenant")
    )
    session_id = models.CharField(_("chat session"), max_length=128)
    package = models.ForeignKey(
        "bookings.Package", on_delete=models.PROTECT, related_name="proposals", verbose_name=_("package")
    )
    date = models.DateField(_("date"))
    customer_name = models.CharField(_("customer name"), max_length=200)
    customer_email = models.EmailField(_("customer e-mail"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField(_("expires at"))
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    confirmed_at = models.DateTimeField(_("confirmed at"), null=True, blank=True)
    executed_at = models.DateTimeField(_("executed at"), null=True, blank=True)
    rejected_at = models.DateTimeField(_("rejected at"), null=True, blank=True)
    failure_code = models.CharField(_("failure code"), max_length=64, blank=True)
    booking = models.OneToOneField(
        "bookings.Booking",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="proposal",
        verbose_name=_("booking"),
    )
    version = models.PositiveIntegerField(_("version"), default=1, editable=False)

    objects = ProposalManager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = _("proposal")
        verbose_name_plural = _("proposals")
        indexes = [models.Index(fields=["tenant", "session_id"], name="proposal_tenant_session")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status=ProposalStatus.EXECUTED) | Q(booking__isnull=False, executed_at__isnull=False),
                name="proposal_executed_has_booking",
            ),
            models.CheckConstraint(
                condition=Q(booking__isnull=True) | Q(status=ProposalStatus.EXECUTED),
                name="proposal_booking_only_when_executed",
            ),
            models.CheckConstraint(
                condition=~Q(status=ProposalStatus.FAILED) | ~Q(failure_code=""), name="proposal_failed_has_reason"
            ),
            models.CheckConstraint(
                condition=Q(status=ProposalStatus.PENDING)
                | Q(status=ProposalStatus.EXPIRED)
                | Q(status=ProposalStatus.REJECTED)
                | Q(confirmed_at__isnull=False),
                name="proposal_decided_has_confirmed_at",
            ),
            # confirmed while the offer stood (decide judges expires_at above its lock and stamps that clock)
            models.CheckConstraint(
                condition=Q(confirmed_at__isnull=True) | Q(confirmed_at__lt=F("expires_at")),
                name="proposal_confirmed_before_expiry",
            ),
            within("status", ProposalStatus, name="proposal_status_valid"),
        ]
        triggers = [
            StateMachine(name="proposal_status_transition", field="status", transitions=PROPOSAL_TRANSITIONS),
            ProposalBookingUnlink(name="proposal_booking_unlink_transition"),
            ProposalLinks(name="proposal_links_transition"),
            BumpVersion(name="proposal_bump_version", fields=PROPOSAL_VERSIONED),
            VersionOnlyIncreases(name="proposal_version_transition"),
            # what the assistant proposed and to whom: a raw UPDATE moving it would book another date
            FrozenColumns(name="proposal_terms_transition", fields=("tenant", "session_id", "package", "date")),
            # a rejection's time, written once (a confirmation's and an execution's are cleared by a reopen)
            SetOnce(name="proposal_times_set_once_transition", fields=("rejected_at",)),
            # how long the customer was offered it: pushed back, a lapsed offer would be confirmed after all
            NeverLater(name="proposal_expiry_transition", field="expires_at"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.package} {self.date} ({self.status})"
