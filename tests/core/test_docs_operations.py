"""docs/operations.md names every management command and every setting Lockstep reads.

Nothing here is a hand-kept list. Commands come from Django's command registry, for the
project's own apps (core.discovery). Settings and environment variables come from the code:

- every UPPER_CASE name assigned at module level of the settings module (inside ``if``/``try``
  blocks too), parsed with ``ast``, and every one its namespace holds once imported;
- every environment variable the settings module reads through its ``environ.Env`` object:
  the literal ones parsed with ``ast`` (``env.str("NAME")``, ``env.int``, ``env.bool``,
  ``env.list``, ``env.db``, ``env("NAME")``, in every branch) plus every name the module asks
  for when it is imported with a clean environment (which catches names passed through a
  helper, e.g. ``_throttle_rate("THROTTLE_…")``);
- every environment variable read with ``os.environ.get``/``os.environ[...]``/``os.getenv``/
  ``"NAME" in os.environ`` in the settings package and the project's apps (``setdefault`` is a
  write: it names a default for someone else to read);
- every setting read in the settings package and the project's apps as ``settings.NAME``,
  ``getattr(settings, "NAME", default)`` or ``hasattr(settings, "NAME")`` (``settings`` being
  ``django.conf.settings`` under any alias).

A setting is Lockstep's own — and must be documented — unless Django or an installed
third-party app or middleware reads it (``django.conf.global_settings``, or ``settings.NAME`` /
``getattr(settings, "NAME"`` in that package's source: ROOT_URLCONF, REST_FRAMEWORK,
SPECTACULAR_SETTINGS, PGTRIGGER_…). Environment variables are all Lockstep's own.

The doc's convention (stated at its top): each command and each setting is a row of a
Markdown table, named in backticks in a key column — a column headed ``command``,
``environment variable``, ``variable`` or ``setting`` — as `` `manage.py <name> …` `` for a
command and `` `NAME` `` for a setting or an environment variable.
"""

import ast
import functools
import importlib.util
import os
import re
import runpy
from pathlib import Path
from unittest import mock

import environ
from django.apps import apps
from django.conf import ENVIRONMENT_VARIABLE, global_settings, settings
from django.core.management import get_commands, load_command_class

from core.discovery import PROJECT_ROOT, project_apps
from core.management.base import GuardedCommand

DOC = PROJECT_ROOT / "docs" / "operations.md"
KEY_HEADERS = {"command", "commands", "environment variable", "variable", "setting", "settings"}
SETTING_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
LIBRARY_READS = (
    re.compile(r"\bsettings\.([A-Z][A-Z0-9_]*)\b"),
    re.compile(r"getattr\(\s*settings\s*,\s*[\"']([A-Z][A-Z0-9_]*)[\"']"),
)


# --- discovery: the code --------------------------------------------------------------


def settings_file():
    """The settings module's file (found as Django finds it: the fixtures' overrides hide SETTINGS_MODULE)."""
    return Path(importlib.util.find_spec(os.environ[ENVIRONMENT_VARIABLE]).origin)


def scanned_files():
    """The settings package and every project app's modules (tests and the venv are neither)."""
    roots = [settings_file().parent, *(Path(config.path) for config in project_apps())]
    files = set()
    for root in roots:
        files.update(path for path in root.rglob("*.py") if "tests" not in path.relative_to(PROJECT_ROOT).parts)
    return sorted(files)


def _aliases(tree):
    """Local name -> dotted origin, for the imports of ``os`` and ``django.conf.settings``."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def _dotted(node, aliases):
    """``os.environ.get`` for the expression node, with its first name resolved through the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _first_string(call):
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def reads(source):
    """(settings read, environment variables read) by one module's source."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    setting_names, env_names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            if _dotted(node.value, aliases) == "django.conf.settings" and SETTING_NAME.fullmatch(node.attr):
                setting_names.add(node.attr)
        elif isinstance(node, ast.Call):
            function = _dotted(node.func, aliases)
            if function in ("getattr", "hasattr") and len(node.args) >= 2:
                target, name = node.args[0], node.args[1]
                if _dotted(target, aliases) == "django.conf.settings" and isinstance(name, ast.Constant):
                    setting_names.add(name.value)
            elif function in ("os.environ.get", "os.getenv") and _first_string(node):
                env_names.add(_first_string(node))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if _dotted(node.value, aliases) == "os.environ" and isinstance(node.slice, ast.Constant):
                env_names.add(node.slice.value)
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant):
            if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and any(
                _dotted(right, aliases) == "os.environ" for right in node.comparators
            ):
                env_names.add(node.left.value)
    return setting_names, env_names


def _module_level(body):
    """Statements run at import: the module's own, and those inside if/try/with/for blocks."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.If | ast.For | ast.While | ast.With):
            yield from _module_level(statement.body)
            yield from _module_level(getattr(statement, "orelse", []))
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _module_level(block)
            for handler in statement.handlers:
                yield from _module_level(handler.body)


def _names(target):
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _names(element)


def settings_module_names(source):
    """(UPPER_CASE names assigned at module level, environment variables read through environ.Env)."""
    tree = ast.parse(source)
    assigned, env_objects = set(), set()
    for statement in _module_level(tree.body):
        targets = []
        if isinstance(statement, ast.Assign):
            targets = statement.targets
            value = statement.value
            if isinstance(value, ast.Call) and _dotted(value.func, _aliases(tree)) == "environ.Env":
                env_objects.update(name for target in targets for name in _names(target))
        elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
            targets = [statement.target]
        assigned.update(name for target in targets for name in _names(target) if SETTING_NAME.fullmatch(name))
    env_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            on_env = (isinstance(function, ast.Name) and function.id in env_objects) or (
                isinstance(function, ast.Attribute)
                and isinstance(function.value, ast.Name)
                and function.value.id in env_objects
            )
            if on_env and _first_string(node):
                env_names.add(_first_string(node))
    return assigned, env_names


@functools.cache
def library_settings():
    """Settings Django or an installed third-party app or middleware reads: theirs, not Lockstep's."""
    names = {name for name in dir(global_settings) if SETTING_NAME.fullmatch(name)}
    ours = {config.name for config in project_apps()}
    dotted = [config.name for config in apps.get_app_configs() if config.name not in ours]
    packages = {"django"} | {name.split(".")[0] for name in [*dotted, *settings.MIDDLEWARE]}
    for package in sorted(packages):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        for path in Path(spec.origin).parent.rglob("*.py"):
            text = path.read_text(errors="ignore")
            for pattern in LIBRARY_READS:
                names.update(pattern.findall(text))
    return frozenset(names)


def lockstep_own(name):
    return name not in library_settings()


def settings_at_import():
    """(module-level names, environment variables asked for) when the settings module is imported.

    Imported afresh in a clean environment — no variables, no .env file — with only a
    DATABASE_URL (so the embedded server is not started), each ``environ.Env`` lookup recorded.
    """
    asked = set()
    get_value, contains = environ.Env.get_value, environ.Env.__contains__

    def recording_get_value(self, var, *args, **kwargs):
        asked.add(var)
        return get_value(self, var, *args, **kwargs)

    def recording_contains(self, var):
        asked.add(var)
        return contains(self, var)

    clean = {"DATABASE_URL": "postgres://probe@127.0.0.1:5432/probe"}
    with (
        mock.patch.object(environ.Env, "ENVIRON", clean),
        mock.patch.object(environ.Env, "read_env", classmethod(lambda cls, *args, **kwargs: None)),
        mock.patch.object(environ.Env, "get_value", recording_get_value),
        mock.patch.object(environ.Env, "__contains__", recording_contains),
    ):
        namespace = runpy.run_path(str(settings_file()), run_name="settings_probe")
    return {name for name in namespace if SETTING_NAME.fullmatch(name)}, asked


def project_commands():
    """{command name: app name} for the management commands of the project's own apps."""
    ours = {config.name for config in project_apps()}
    return {name: app for name, app in get_commands().items() if app in ours}


@functools.cache
def required_settings():
    """{name: where it is read} for every Lockstep setting and environment variable."""
    required = {}
    assigned, env_names = settings_module_names(settings_file().read_text())
    imported, asked = settings_at_import()
    assigned, env_names = assigned | imported, env_names | asked
    where = settings_file().relative_to(PROJECT_ROOT)
    for name in assigned:
        if lockstep_own(name):
            required.setdefault(name, f"{where} (setting)")
    for name in env_names:
        required.setdefault(name, f"{where} (environment variable)")
    for path in scanned_files():
        setting_names, env_read = reads(path.read_text())
        for name in setting_names:
            if lockstep_own(name):
                required.setdefault(name, f"{path.relative_to(PROJECT_ROOT)} (setting)")
        for name in env_read:
            required.setdefault(name, f"{path.relative_to(PROJECT_ROOT)} (environment variable)")
    return required


# --- the doc ------------------------------------------------------------------------------


def _cells(line):
    """The cells of a table row; ``\\|`` is a pipe inside a cell, as GitHub renders it."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def table_rows():
    """(header, cells) for every row of every Markdown table in the doc."""
    rows, header, lines = [], None, DOC.read_text().splitlines()
    for index, line in enumerate(lines):
        if not line.lstrip().startswith("|"):
            header = None
            continue
        if header is None:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", following) and "-" in following:
                header = [cell.lower() for cell in _cells(line)]
            continue
        if re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", line):
            continue
        rows.append((header, _cells(line)))
    return rows


def key_cells(header, cells):
    return [cell for title, cell in zip(header, cells, strict=False) if title.strip("` ") in KEY_HEADERS]


def documented_commands():
    """{command name: its table row} for every `manage.py <name>` in a key column."""
    found = {}
    for header, cells in table_rows():
        for cell in key_cells(header, cells):
            for name in re.findall(r"`manage\.py ([a-z0-9_]+)[^`]*`", cell):
                found.setdefault(name, dict(zip(header, cells, strict=False)))
    return found


def documented_settings():
    found = set()
    for header, cells in table_rows():
        for cell in key_cells(header, cells):
            found.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", cell))
    return found


# --- the tests ----------------------------------------------------------------------------


def test_the_ast_discovery_sees_every_way_of_reading_a_setting():
    source = """
import os
from os import environ as env_vars
from django.conf import settings
from django.conf import settings as conf

A = settings.LOCKSTEP_A
B = getattr(conf, "LOCKSTEP_B", 1)
C = hasattr(settings, "LOCKSTEP_C")
D = os.environ.get("ENV_D") or os.getenv("ENV_E")
E = env_vars["ENV_F"]
F = "ENV_G" in os.environ
os.environ.setdefault("NOT_READ", "x")
os.environ["NOT_READ_EITHER"] = "y"
settings.lowercase_is_not_a_setting
other.NOT_SETTINGS
"""
    assert reads(source) == (
        {"LOCKSTEP_A", "LOCKSTEP_B", "LOCKSTEP_C"},
        {"ENV_D", "ENV_E", "ENV_F", "ENV_G"},
    )
    settings_source = """
import environ
env = environ.Env()
DEBUG = env.bool("DEBUG", default=True)
if not DEBUG:
    SECURE_X, OWN_Y = env.bool("X_ENV", default=True), env("Y_ENV")
try:
    OWN_Z: int = env.int("Z_ENV", default=1)
except ValueError:
    pass
_private = env.str("PRIVATE_ENV", default="")
def helper():
    NOT_MODULE_LEVEL = 1
"""
    assert settings_module_names(settings_source) == (
        {"DEBUG", "SECURE_X", "OWN_Y", "OWN_Z"},
        {"DEBUG", "X_ENV", "Y_ENV", "Z_ENV", "PRIVATE_ENV"},
    )


def test_discovery_finds_commands_settings_and_hidden_reads():
    """Guard the guard: an empty discovery would make the tests below pass vacuously."""
    assert project_commands()
    required = required_settings()
    assert any("(environment variable)" in where for where in required.values())
    hidden = {name for name, where in required.items() if not where.startswith("config/settings.py")}
    assert hidden, "no setting read outside config/settings.py was found: is the ast discovery broken?"


def test_every_management_command_is_documented():
    documented = documented_commands()
    missing = sorted(f"{name} ({app})" for name, app in project_commands().items() if name not in documented)
    assert not missing, (
        f"docs/operations.md has no table row for these management commands: {', '.join(missing)}. "
        "Add each as `manage.py <name>` in the command column of a table (what it does, when, exit codes)."
    )


def test_every_documented_command_exists():
    stale = sorted(set(documented_commands()) - set(get_commands()))
    assert not stale, f"docs/operations.md documents commands that do not exist: {', '.join(stale)}"


def test_guarded_commands_state_their_exit_codes():
    """A GuardedCommand answers with exit codes cron acts on: its row says which."""
    documented = documented_commands()
    silent = []
    for name, app in sorted(project_commands().items()):
        if isinstance(load_command_class(app, name), GuardedCommand) and name in documented:
            row = documented[name]
            if not any("exit" in title and re.search(r"\d", cell) for title, cell in row.items()):
                silent.append(name)
    assert not silent, f"docs/operations.md: give the exit codes of these GuardedCommands: {', '.join(silent)}"


def test_every_setting_and_environment_variable_is_documented():
    documented = documented_settings()
    missing = sorted(
        f"{name} — read in {where}" for name, where in required_settings().items() if name not in documented
    )
    assert not missing, (
        "docs/operations.md has no table row for these settings / environment variables:\n  "
        + "\n  ".join(missing)
        + "\nAdd each as `NAME` in a key column (environment variable / setting) with its default and effect."
    )


def test_every_documented_setting_is_read_somewhere():
    """A documented name the code no longer reads is a stale row (Django's and third-party names pass)."""
    # Keys of a library's dict setting (REST_FRAMEWORK's NUM_PROXIES, …) may be documented too.
    library_keys = {
        key
        for name in library_settings()
        if isinstance(getattr(settings, name, None), dict)
        for key in getattr(settings, name)
        if isinstance(key, str)
    }
    known = set(required_settings()) | library_settings() | library_keys
    stale = sorted(name for name in documented_settings() if name not in known)
    assert not stale, f"docs/operations.md documents settings nothing reads: {', '.join(stale)}"
