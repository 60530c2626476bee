"""The error catalog in docs/api.md is true: every code the code base can answer is documented, with
its status, every documented code exists, and each distinct failure has a code of its own.

Codes are collected, not listed here: every DomainError subclass of the project's apps (all their
modules imported), every code the DRF exception handler maps (``core.api.errors._DRF_CODES``), and
every literal code of an error envelope built by hand (``error_body("…")`` or ``{"error": {"code":
"…"}}``), found by parsing the project's source with ``ast``.
"""

import ast
import pkgutil
import re
from collections import defaultdict
from importlib import import_module

from rest_framework import exceptions as drf

from core.api.errors import _DRF_CODES
from core.discovery import PROJECT_ROOT, project_apps
from core.exceptions import Conflict, DomainError, InvalidInput, LockContended, NotFound

API_DOC = PROJECT_ROOT / "docs" / "api.md"

# The generic kinds every leaf error builds on (core/exceptions.py); LockContended is a failure of
# its own (resource_locked), so it is not one of them.
KINDS = (DomainError, InvalidInput, NotFound, Conflict)

# Classes that share a code because they are the same failure. Keep this tiny.
ALIASES = {
    # A tenant that does not exist, or is not the caller's, must answer exactly like any other
    # missing thing (docs/api.md, Auth: the API never reveals which tenants exist).
    # A row deleted while an admin page saved it is missing like any other (said in the admin's words).
    "not_found": {"core.exceptions.NotFound", "core.exceptions.TenantNotFound", "core.exceptions.DeletedMeanwhile"},
    # A refusal no guard names, said in the admin's words (the API answers the same code for it).
    "conflict": {"core.exceptions.Conflict", "core.exceptions.ChangedMeanwhile"},
}


# --- what the code base can answer ------------------------------------------------------------


def _import_every_project_module():
    """Import every module of every project app, so every DomainError subclass is defined."""
    for config in project_apps():
        for info in pkgutil.walk_packages(config.module.__path__, prefix=f"{config.name}."):
            if ".migrations" not in info.name:
                import_module(info.name)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _qualname(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def domain_error_classes():
    """Every DomainError subclass defined by the project's apps (not by tests or libraries)."""
    _import_every_project_module()
    roots = {config.name for config in project_apps()}
    return sorted(
        {cls for cls in _subclasses(DomainError) if cls.__module__.split(".")[0] in roots},
        key=_qualname,
    )


def _source_files():
    folders = [config.path for config in project_apps()] + [PROJECT_ROOT / "config"]
    for folder in folders:
        for path in sorted(PROJECT_ROOT.joinpath(folder).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), filename=str(path))


def _callee(node):
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _literal(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def envelope_literals():
    """[(code, status or None, "path:line")] of every error envelope built with a literal code."""
    found = []
    for path, tree in _source_files():
        where = str(path.relative_to(PROJECT_ROOT))
        statuses = {}  # the error_body(...) call -> the status of the Response that carries it
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Call):
                status = next((k.value for k in node.keywords if k.arg == "status"), None)
                if isinstance(status, ast.Constant):
                    statuses[node.args[0]] = status.value
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node) == "error_body" and node.args:
                code = _literal(node.args[0])
                if code is not None:
                    found.append((code, statuses.get(node), f"{where}:{node.lineno}"))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if key is not None and _literal(key) == "error" and isinstance(value, ast.Dict):
                        for inner_key, inner_value in zip(value.keys, value.values, strict=True):
                            code = _literal(inner_value)
                            if inner_key is not None and _literal(inner_key) == "code" and code is not None:
                                found.append((code, None, f"{where}:{node.lineno}"))
    return found


def raised_codes():
    """{code: {(status or None, where)}} over every source of error codes."""
    codes = defaultdict(set)
    for cls in domain_error_classes():
        codes[cls.code].add((cls.status_code, _qualname(cls)))
    for exc_class, code in _DRF_CODES.items():
        codes[code].add((exc_class.status_code, f"rest_framework.exceptions.{exc_class.__name__}"))
    for code, status, where in envelope_literals():
        codes[code].add((status, where))
    return dict(codes)


# --- what docs/api.md says ----------------------------------------------------------------------


def documented_codes():
    """{code: (status, status cell)} from the table under "## Error catalog" in docs/api.md."""
    text = API_DOC.read_text()
    section = text.split("\n## Error catalog", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    documented = {}
    for row in rows[2:]:  # the header and its |---| line
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        status = re.match(r"\d{3}", cells[1])
        for code in re.findall(r"`([^`]*)`", cells[0]):
            assert re.fullmatch(r"[a-z][a-z0-9_]*", code), f"docs/api.md: {code!r} is not a snake_case code"
            assert code not in documented, f"docs/api.md documents {code} twice"
            assert status, f"docs/api.md gives {code} no status: {cells[1]!r}"
            documented[code] = (int(status.group()), cells[1])
    return documented


def _listing(codes, sources):
    return "\n".join(f"  {code}: {', '.join(sorted(where for _s, where in sources.get(code, ())))}" for code in codes)


# --- the tests ------------------------------------------------------------------------------------


def test_every_source_of_codes_is_found():
    classes = domain_error_classes()
    literals = {code for code, _status, _where in envelope_literals()}
    assert len(classes) >= 50 and len(_DRF_CODES) >= 8 and len(documented_codes()) >= 50
    assert {"server_error", "bad_request"} <= literals
    assert {"database_timeout", "database_unavailable"} <= {cls.code for cls in classes}
    # Every `code = "…"` a class of the project declares was found by the import walk (DomainError's
    # own placeholder aside: the bare-kind test below keeps it from being raised).
    declared = {
        _literal(stmt.value)
        for _path, tree in _source_files()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for stmt in node.body
        if isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["code"]
    } - {None, DomainError.code}
    assert declared <= {cls.code for cls in classes}, declared - {cls.code for cls in classes}


def test_every_code_raised_is_documented():
    raised = raised_codes()
    missing = sorted(set(raised) - set(documented_codes()))
    assert not missing, "codes the API can answer that docs/api.md's Error catalog lacks:\n" + _listing(missing, raised)


def test_every_documented_code_exists():
    stale = sorted(set(documented_codes()) - set(raised_codes()))
    assert not stale, f"docs/api.md's Error catalog documents codes nothing raises: {', '.join(stale)}"


def test_every_documented_status_is_the_status_answered():
    documented, wrong = documented_codes(), []
    for code, sources in sorted(raised_codes().items()):
        for status, where in sorted(sources, key=str):
            if code in documented and status is not None and status != documented[code][0]:
                wrong.append(f"  {code}: documented {documented[code][0]}, {where} answers {status}")
    assert not wrong, "docs/api.md's Error catalog gives the wrong status:\n" + "\n".join(wrong)


def test_lock_refusals_are_documented_with_retry_after():
    documented = documented_codes()
    locks = {cls.code for cls in domain_error_classes() if issubclass(cls, LockContended)}
    assert locks >= {"resource_locked", "operation_locked", "parent_locked"}
    lacking = sorted(code for code in locks if "Retry-After" not in documented.get(code, (0, ""))[1])
    assert not lacking, f"lock refusals documented without Retry-After: {', '.join(lacking)}"


def test_no_two_domain_errors_share_a_code_unless_they_are_aliases():
    by_code = defaultdict(set)
    for cls in domain_error_classes():
        by_code[cls.code].add(_qualname(cls))
    shared = {code: names for code, names in by_code.items() if len(names) > 1}
    unexplained = {code: sorted(names) for code, names in shared.items() if names != ALIASES.get(code)}
    assert not unexplained, f"distinct failures share a code (give each its own, or list true aliases): {unexplained}"
    assert set(ALIASES) == set(shared), f"ALIASES lists codes no longer shared: {set(ALIASES) - set(shared)}"


def test_codes_built_outside_domain_errors_are_not_a_leaf_errors_code():
    """A hand-built envelope or a DRF mapping may share only a generic kind's code (not_found, …)."""
    generic = {cls.code for cls in KINDS} | set(ALIASES)
    leaves = defaultdict(set)
    for cls in domain_error_classes():
        if cls.code not in generic:
            leaves[cls.code].add(_qualname(cls))
    others = set(_DRF_CODES.values()) | {code for code, _status, _where in envelope_literals()}
    clashes = {code: sorted(leaves[code]) for code in sorted(others & set(leaves))}
    assert not clashes, f"codes built by hand that a domain error also answers: {clashes}"


def test_every_drf_exception_has_its_own_code():
    """Every concrete DRF exception is mapped (never DRF's default_code), each to a different code."""
    concrete = [
        cls
        for cls in vars(drf).values()
        if isinstance(cls, type) and issubclass(cls, drf.APIException) and cls is not drf.APIException
    ]
    unmapped = [cls.__name__ for cls in concrete if not any(issubclass(cls, mapped) for mapped in _DRF_CODES)]
    assert not unmapped, f"DRF exceptions with no code in core.api.errors._DRF_CODES: {unmapped}"
    assert len(set(_DRF_CODES.values())) == len(_DRF_CODES)


def test_no_failure_is_raised_as_a_bare_kind():
    """``raise InvalidInput()`` answers a generic code; a distinct failure raises a leaf with its own."""
    kinds = {cls.__name__ for cls in KINDS}
    bare = set()
    for path, tree in _source_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                callee = _callee(node.exc) if isinstance(node.exc, ast.Call) else getattr(node.exc, "id", None)
                if callee in kinds:
                    bare.add((str(path.relative_to(PROJECT_ROOT)), callee))
    assert not bare, f"failures raised as a bare kind (raise a leaf error with its own code): {sorted(bare)}"
