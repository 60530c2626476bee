"""Shared option handling for the profiles commands: output language and exit codes."""

import os
import sys

from django.conf import settings
from django.utils import translation

# Exit codes (core.management.base): 0 done, 1 refused by the data, 2 bad usage,
# 3 a lock was held by another transaction (nothing written; run it again shortly).
from core.management.base import EXIT_LOCKED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE  # noqa: F401


def add_language_argument(parser):
    parser.add_argument(
        "--language",
        choices=[code for code, _name in settings.LANGUAGES],
        help="Language of the messages (default: $DJANGO_LANGUAGE, else LANGUAGE_CODE).",
    )


def chosen_language(options):
    language = options.get("language") or os.environ.get("DJANGO_LANGUAGE") or settings.LANGUAGE_CODE
    return language if language in dict(settings.LANGUAGES) else settings.LANGUAGE_CODE


def is_text(value):
    """Whether ``value`` is text PostgreSQL can store: a byte of argv that is not UTF-8 reaches Python as a lone
    surrogate (surrogateescape), which the database driver cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def fail(command, message, code):
    """Print the (already localized) message on stderr and exit with ``code``."""
    command.stderr.write(str(message))
    sys.exit(code)


override = translation.override
