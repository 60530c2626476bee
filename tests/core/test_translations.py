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
