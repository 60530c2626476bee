"""Guarded rows: what a plain save() may not write, and what the database itself refuses.

A guarded row has many writers (API, admin form and actions, commands, sweeps,
webhooks). Three layers keep "exactly once" a property of the row, not of one path:

- ``GuardedModel``: a ``save()`` of an existing row that would write one of its
  ``guarded_fields`` raises GuardedWriteError (a programming error the tests catch):
  a full-row save writes back what was read, undoing whatever committed meanwhile.
  Guarded columns change only through the manager's guarded operations (``.update()``
  with the rule in its WHERE).
- ``StateMachine``: a trigger (django-pgtrigger) refusing every change of the state
  column not in the documented machine, and every insert in a non-initial state.
  It raises SQLSTATE 23514 with the trigger's name as the constraint, which
  ``core.guards.database_refusals`` turns into TransitionRefused (409).
- ``BumpVersion``: a trigger that increments ``version`` whenever a column an
  operator or API client edits changes, whoever the writer, so an edit carrying the
  version it read is refused (VersionConflict) when someone changed those fields since;
  ``VersionOnlyIncreases`` beside it refuses a write that takes ``version`` back.

Why django-pgtrigger (pinned in requirements.txt): triggers are declared in the
model's ``Meta.triggers`` beside its constraints and reach the database through
ordinary migrations (makemigrations writes them), so the machine in the code and the
one in the database cannot drift. Its own ``FSM`` trigger raises a generic P0001
error with free text; ours raises a check violation that names itself, so a refusal
maps to a stable error code.
"""

import functools
import operator

import pgtrigger
from django.db import models
from django.db.models import Q

from core.exceptions import GuardedWriteError


class GuardedModel(models.Model):
    """A model whose ``guarded_fields`` only guarded manager operations may write."""

    guarded_fields: tuple = ()

    class Meta:
        abstract = True

    def save(self, *args, update_fields=None, **kwargs):
        if self._state.adding and self.pk is not None and self.guarded_fields:
            # A new instance given an existing row's pk would be written over that row (Django tries an
            # UPDATE first), guarded columns and all: a new instance is inserted, or refused as a duplicate.
            kwargs["force_insert"] = True
        if not self._state.adding and self.guarded_fields:
            # update_fields may name a foreign key by its column attribute ("package_id"): compare fields.
            names = self.guarded_fields if update_fields is None else update_fields
            written = {self._meta.get_field(name).name for name in names}
            touched = sorted(written & {self._meta.get_field(name).name for name in self.guarded_fields})
            if touched:
                raise GuardedWriteError(
                    f"{type(self).__name__}.save() would write guarded columns {touched}: "
                    "change them through the manager's guarded operations, and other fields with "
                    "save(update_fields=[...]) or the manager's edit."
                )
        super().save(*args, update_fields=update_fields, **kwargs)


def refusal_sql(constraint, detail_sql, message_sql):
    """PL/pgSQL that refuses the write as a check violation named ``constraint`` (mapped by core.guards)."""
    return (
        f"RAISE EXCEPTION USING ERRCODE = 'check_violation', CONSTRAINT = '{constraint}', "
        f"MESSAGE = {message_sql}, DETAIL = {detail_sql};"
    )


class Refusal(pgtrigger.Trigger):
    """Refuse, in the database, every write that meets ``condition``, as a check violation named ``name``.

    Subclasses declare ``when``, ``operation``, ``condition`` and the refusal's SQL: ``detail_sql``
    (``'old->new'``, what the error maps to) and ``message_sql`` (what a human reads).
    """

    when = pgtrigger.Before
    detail_sql = message_sql = None

    def get_func(self, model):
        return self.format_sql(f"{refusal_sql(self.name, self.detail_sql, self.message_sql)} RETURN NEW;")


class VersionOnlyIncreases(Refusal):
    """Refuse, in the database, an UPDATE that lowers a row's ``version``.

    Optimistic checks (API PATCH, admin forms, deletes at a version) compare the version a
    client read with the row's: a version that went back, as a full-row ``save()`` of a row
    read before a colleague's edit would write it, lets a stale edit pass and undoes the
    colleague's. Declared beside every ``BumpVersion``; ``name`` is ``<model>_version_transition``
    (409 invalid_transition, ``old->new``).
    """

    operation = pgtrigger.Update
    condition = pgtrigger.Condition('NEW."version" < OLD."version"')
    detail_sql = 'OLD."version"::text || \'->\' || NEW."version"::text'
    message_sql = (
        "format('%s: version of row %s may not go down from %s to %s', "
        'TG_TABLE_NAME, OLD."id", OLD."version", NEW."version")'
    )

    def __init__(self, *, name):
        if not name.endswith("_version_transition"):
            raise ValueError("A VersionOnlyIncreases trigger's name ends in _version_transition")
        super().__init__(name=name)


class FrozenColumns(pgtrigger.Trigger):
    """Refuse, in the database, every UPDATE of ``fields``: what the row was made for (its tenant, its
    package and date...) never changes, whoever writes (GuardedModel only stops ``save()``).

    ``name`` ends in ``_transition``: the refusal is 409 ``invalid_transition`` (``made->altered``).
    """

    when = pgtrigger.Before
    operation = pgtrigger.Update

    def __init__(self, *, name, fields):
        if not name.endswith("_transition"):
            raise ValueError("A FrozenColumns trigger's name ends in _transition")
        self.fields = tuple(fields)
        super().__init__(name=name)

    def get_func(self, model):
        columns = [model._meta.get_field(field).column for field in self.fields]
        changed = " OR ".join(f'OLD."{column}" IS DISTINCT FROM NEW."{column}"' for column in columns)
        message = "format('%s: %s of row %s may not change', TG_TABLE_NAME, '" + ", ".join(columns) + '\', OLD."id")'
        return self.format_sql(
            f"""
            IF {changed} THEN {refusal_sql(self.name, "'made->altered'", message)} END IF;
            RETURN NEW;
            """
        )


class SetOnce(Refusal):
    """Refuse, in the database, every UPDATE that changes one of ``fields`` once it is set (not NULL): a
    stamp of what happened (used at, for that amount; approved at) is written by the transition that
    happened and never again. A state machine only sees the state change: a second "consume" of a used
    session, rewriting its amount and time with the status left ``used``, would pass it silently.

    The trigger's WHEN clause judges the row, so an UPDATE that sets no stamp anew (every guarded write but
    a rewrite) never calls its function. ``name`` ends in ``_transition``: the refusal is 409
    ``invalid_transition`` (``set->altered``). PostgreSQL runs a table's triggers in name order: name it to
    sort after the state machine's, so a status move that also clears a stamp is refused as the move it is.
    """

    operation = pgtrigger.Update
    detail_sql = "'set->altered'"

    def __init__(self, *, name, fields, blank_unset=()):
        """``blank_unset``: those of ``fields`` (text columns) where ``''``, not NULL, means not set yet."""
        if not name.endswith("_transition"):
            raise ValueError("A SetOnce trigger's name ends in _transition")
        self.fields = tuple(fields)

        def rewritten(field):
            once = pgtrigger.Q(**{f"old__{field}__isnull": False, f"old__{field}__df": pgtrigger.F(f"new__{field}")})
            return once & ~pgtrigger.Q(**{f"old__{field}": ""}) if field in blank_unset else once

        self.message_sql = (
            f"format('%s: %s of row %s may not change once set', TG_TABLE_NAME, '{', '.join(self.fields)}', OLD.\"id\")"
        )
        super().__init__(name=name, condition=functools.reduce(operator.or_, map(rewritten, self.fields)))


class NeverLater(Refusal):
    """Refuse, in the database, every UPDATE that moves ``field`` (a deadline) later: a consent given until a
    time, pushed back by a later write, would be used after it lapsed. Bringing it forward stays allowed
    (an expiry written as it happens). ``name`` ends in ``_transition``: 409 ``invalid_transition``
    (``earlier->later``).
    """

    operation = pgtrigger.Update
    detail_sql = "'earlier->later'"

    def __init__(self, *, name, field):
        if not name.endswith("_transition"):
            raise ValueError("A NeverLater trigger's name ends in _transition")
        self.field = field
        self.message_sql = f"format('%s: %s of row %s may not move later', TG_TABLE_NAME, '{field}', OLD.\"id\")"
        super().__init__(name=name, condition=pgtrigger.Q(**{f"new__{field}__gt": pgtrigger.F(f"old__{field}")}))


class StateMachine(pgtrigger.Trigger):
    """Refuse, in the database, every state change and every insert that ``transitions`` does not list.

    ``transitions`` is the whole machine, one ``(old, new)`` pair per edge: ``(None, state)`` is a
    birth (a new row may start as ``state``), any other pair a change. ``name`` must end in
    ``_transition`` (it is the constraint name refusals carry). Rows whose state does not change
    pass untouched.
    """

    when = pgtrigger.Before
    operation = pgtrigger.Insert | pgtrigger.Update

    def __init__(self, *, name, field, transitions):
        if not name.endswith("_transition"):
            raise ValueError("A StateMachine trigger's name ends in _transition")
        for value in {state for pair in transitions for state in pair if state is not None}:
            if value and not value.replace("_", "").isalnum():
                raise ValueError(f"State {value!r} must be a plain identifier (or empty)")
        self.field = field
        self.initial = sorted({new for old, new in transitions if old is None})
        self.transitions = sorted({(old, new) for old, new in transitions if old is not None})
        if not self.initial:
            raise ValueError("A StateMachine needs a birth: a (None, state) pair")
        super().__init__(name=name)

    @property
    def states(self):
        """Every state a row of this machine can be in."""
        return {*self.initial, *(state for pair in self.transitions for state in pair)}

    def get_func(self, model):
        column = model._meta.get_field(self.field).column
        old, new = f'OLD."{column}"', f'NEW."{column}"'
        allowed = "ARRAY[" + ",".join(f"'{a}->{b}'" for a, b in self.transitions) + "]::text[]"
        initial = "ARRAY[" + ",".join(f"'{state}'" for state in self.initial) + "]::text[]"
        refuse_insert = refusal_sql(
            self.name, f"'->' || {new}", f"format('%s: a new row cannot start as %s', TG_TABLE_NAME, {new})"
        )
        refuse_update = refusal_sql(
            self.name,
            f"{old} || '->' || {new}",
            f"format('%s: %s may not go from %s to %s', TG_TABLE_NAME, '{self.field}', {old}, {new})",
        )
        return self.format_sql(
            f"""
            IF TG_OP = 'INSERT' THEN
                IF NOT ({new} = ANY({initial})) THEN {refuse_insert} END IF;
            ELSIF {old} IS DISTINCT FROM {new} AND NOT (({old} || '->' || {new}) = ANY({allowed})) THEN
                {refuse_update}
            END IF;
            RETURN NEW;
            """
        )

    def allows(self, old, new):
        return old == new or (old, new) in self.transitions


class BumpVersion(pgtrigger.Trigger):
    """``version := version + 1`` when any of ``fields`` changes and the writer did not bump it itself."""

    when = pgtrigger.Before
    operation = pgtrigger.Update

    def __init__(self, *, name, fields, version_field="version"):
        self.fields = tuple(fields)
        self.version_field = version_field
        super().__init__(name=name)

    def get_func(self, model):
        meta = model._meta
        version = meta.get_field(self.version_field).column
        changed = " OR ".join(
            f'OLD."{meta.get_field(name).column}" IS DISTINCT FROM NEW."{meta.get_field(name).column}"'
            for name in self.fields
        )
        return self.format_sql(
            f"""
            IF ({changed}) AND NEW."{version}" = OLD."{version}" THEN
                NEW."{version}" := OLD."{version}" + 1;
            END IF;
            RETURN NEW;
            """
        )


def state_machines(model):
    """The StateMachine triggers declared on ``model`` (for docs and the exhaustive transition tests)."""
    return [trigger for trigger in getattr(model._meta, "triggers", []) if isinstance(trigger, StateMachine)]


def within(field, choices, *, name):
    """A CHECK that ``field`` holds one of ``choices``' values (the state machine's trigger guards the moves)."""
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)
