"""Arabic throughout: every message of every app's catalog is translated, and the compiled .mo says the same."""

import ast
import gettext
from pathlib import Path

import pytest

from core.discovery import PROJECT_ROOT

CATALOGS = sorted(PROJECT_ROOT.glob("*/locale/ar/LC_MESSAGES/django.po"))


def entries(po: Path):
    """(msgid, msgid_plural or None, [msgstr…], fuzzy) of every live entry (obsolete ``#~`` ones skipped)."""
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#~")]
        if not any(line.startswith("msgid ") for line in lines):
            continue
        fuzzy = any(line.startswith("#,") and "fuzzy" in line for line in lines)
        fields, current = {}, None
        for line in lines:
            if line.startswith("#"):
                continue
            if line.startswith('"'):
                fields[current] += ast.literal_eval(line)
                continue
            current, _, value = line.partition(" ")
            fields[current] = ast.literal_eval(value)
        strs = [value for key, value in fields.items() if key.startswith("msgstr")]
        yield fields["msgid"], fields.get("msgid_plural"), strs, fuzzy


@pytest.mark.parametrize("po", CATALOGS, ids=[po.parts[-5] for po in CATALOGS])
def test_every_message_is_translated_and_compiled(po):
    compiled = gettext.GNUTranslations(po.with_suffix(".mo").open("rb"))
    missing, stale = [], []
    for msgid, plural, strs, fuzzy in entries(po):
        if not msgid:
            continue  # the header
        if fuzzy or not all(strs):
            missing.append(msgid)
        elif (compiled.ngettext(msgid, plural, 1) if plural else compiled.gettext(msgid)) != strs[1 if plural else 0]:
            stale.append(msgid)
    assert not missing, f"{po}: untranslated or fuzzy (make messages, then translate): {missing}"
    assert not stale, f"{po}: the .mo is older than the .po (make messages compiles it): {stale}"


def test_every_admin_page_name_is_arabic():
    """No "الحجزs": each model of ours in the admin has a translated plural, each app a translated name."""
    from django.contrib import admin
    from django.utils import translation

    from core.discovery import project_apps

    ours = {config.label for config in project_apps()}
    untranslated = []
    with translation.override("ar"):
        for model in admin.site._registry:
            opts = model._meta
            if opts.app_label not in ours:
                continue
            for text in (opts.verbose_name, opts.verbose_name_plural, opts.app_config.verbose_name):
                if any("a" <= ch.lower() <= "z" for ch in str(text).replace("Lockstep", "")):  # the name stays
                    untranslated.append(f"{opts.label}: {text}")
    assert not untranslated, untranslated


def test_every_field_an_operator_reads_is_labelled_for_translation():
    """Regression: fields without a label showed Django's own, the field's name in English, on Arabic pages
    ("Refund state:", "حسب role"). Every field of our models (and of their history rows) declares one."""
    from django.apps import apps

    from core.discovery import project_apps

    ours = {config.label for config in project_apps()}
    unlabelled = [
        f"{model._meta.label}.{field.name}"
        for model in apps.get_models()
        if model._meta.app_label in ours
        for field in model._meta.get_fields()
        if getattr(field, "concrete", False)
        and not field.auto_created
        and not field.name.startswith("pgh_")  # django-pghistory's own columns of a history row
        and field.name != "id"
        and field._verbose_name is None
    ]
    assert not unlabelled, unlabelled
