"""A Python client generated from Lockstep's own OpenAPI schema by openapi-python-client, imported for a test.

``generated_client(schema, directory)`` writes the schema, runs the generator's CLI (with the
venv's interpreter, ``--fail-on-warning``: a warning is a schema the generator could not
express), imports the package and, on exit, forgets it again (``sys.path`` and ``sys.modules``).

Operations are looked up by what the API documents — method and path — rather than by tag and
operationId, which are naming choices of the schema: ``client.operation("POST",
"/api/t/{tenant}/proposals/{id}/confirm")`` is the generated module with ``sync_detailed``.
"""

import importlib
import json
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

PACKAGE = "lockstep_client"
CONFIG = f"package_name_override: {PACKAGE}\npost_hooks: []\n"  # no ruff pass: nobody reads the generated code
# What every generated endpoint module's _get_kwargs() says about its request.
REQUEST_LINE = re.compile(r'"method":\s*"(?P<method>[a-z]+)",\s*"url":\s*"(?P<path>[^"]+)"')


class GeneratedClient:
    """The imported package, its models, its two client classes and its operations by (method, path)."""

    def __init__(self, package, schema):
        self.package = package
        self.schema = schema
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.types = importlib.import_module(f"{PACKAGE}.types")
        self.errors = importlib.import_module(f"{PACKAGE}.errors")
        self.Client = package.Client
        self.AuthenticatedClient = package.AuthenticatedClient
        self._operations = {}
        api = Path(package.__file__).parent / "api"
        for source in sorted(api.glob("*/*.py")):
            if source.name == "__init__.py":
                continue
            match = REQUEST_LINE.search(source.read_text())
            if match:
                key = (match["method"].upper(), match["path"])
                self._operations[key] = f"{PACKAGE}.api.{source.parent.name}.{source.stem}"

    def operation(self, method, path):
        key = (method.upper(), path)
        documented = self.schema["paths"].get(path, {})
        assert method.lower() in documented, f"the schema does not document {method} {path}"
        assert key in self._operations, f"the generated client has no function for {method} {path}"
        return importlib.import_module(self._operations[key])


@contextmanager
def generated_client(schema, directory):
    directory = Path(directory)
    schema_path = directory / "schema.json"
    schema_path.write_text(json.dumps(schema))
    config_path = directory / "config.yaml"
    config_path.write_text(CONFIG)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(schema_path),
            "--output-path",
            str(directory / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(config_path),
            "--fail-on-warning",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"openapi-python-client failed on the schema:\n{result.stdout}\n{result.stderr}"
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    try:
        yield GeneratedClient(importlib.import_module(PACKAGE), schema)
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
