"""Lockstep's own apps and their conventional modules, found instead of listed by hand.

An app of this project (its code under the checkout, not a library's) may provide
``invariants``, ``race_scenarios``, ``seed`` and ``api.urls``; adding an app to
INSTALLED_APPS is all it takes for check_invariants, race_demo, seed_demo, the URL map
and the guard-contract test to include it, in INSTALLED_APPS order.
"""

import sys
from importlib import import_module
from pathlib import Path

from django.apps import apps
from django.utils.module_loading import module_has_submodule

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = Path(sys.prefix).resolve()  # the venv, which may sit inside the checkout


def _ours(config):
    path = Path(config.path).resolve()
    return path.is_relative_to(PROJECT_ROOT) and not path.is_relative_to(ENVIRONMENT)


def project_apps():
    """The installed app configs whose code lives in this checkout (core first, as installed)."""
    return [config for config in apps.get_app_configs() if _ours(config)]


def project_modules(name):
    """[(app label, module)] for every project app that has the submodule ``name`` (e.g. "invariants")."""
    found = []
    for config in project_apps():
        package, _dot, rest = name.partition(".")
        if module_has_submodule(config.module, package) and (
            not rest or module_has_submodule(import_module(f"{config.name}.{package}"), rest)
        ):
            found.append((config.label, import_module(f"{config.name}.{name}")))
    return found
