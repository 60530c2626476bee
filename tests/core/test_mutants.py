"""``make mutants`` stays runnable: every guard it removes is still in the code, once.

The mutants themselves take minutes and run outside ``make test``; a refactor that moves a
guard makes its mutant STALE, which only that run would tell. This check is instant.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = json.loads((ROOT / "tools/mutants.json").read_text())


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant["name"])
def test_each_mutant_names_code_that_is_there_once_and_tests_that_exist(mutant):
    assert (ROOT / mutant["file"]).read_text().count(mutant["old"]) == 1
    assert mutant["old"] != mutant["new"]
    for test in mutant["tests"]:
        assert (ROOT / test.split("::")[0]).is_file(), test


@pytest.mark.parametrize("mutant", [m for m in MUTANTS if m["file"].endswith(".py")], ids=lambda mutant: mutant["name"])
def test_each_mutant_leaves_its_python_file_valid(mutant):
    """A mutant that breaks its file's syntax would only make its tests error, which proves nothing of the guard
    (``make mutants`` reports it as ERROR, not KILLED): caught here without running them."""
    source = (ROOT / mutant["file"]).read_text()
    compile(source.replace(mutant["old"], mutant["new"]), mutant["file"], "exec")


MIGRATION_MUTANTS = [m for m in MUTANTS if "/migrations/" in m["file"]]
OBJECT_NAME = re.compile(r"(?<!\w)name='(\w+)'")  # a trigger's or a constraint's, not an operation's model_name


@pytest.mark.parametrize("mutant", MIGRATION_MUTANTS, ids=lambda mutant: mutant["name"])
def test_each_migration_mutant_breaks_the_trigger_the_database_runs(mutant):
    """A trigger re-created by a later migration replaces the one a mutant breaks in an earlier one: that
    mutant then changes nothing the tests meet, and survives (five did, after a guard was rewritten). It must
    break the newest migration that creates its trigger."""
    path = ROOT / mutant["file"]
    source = path.read_text()
    at = source.index(mutant["old"])
    end = source.find("migrations.", at)  # the next operation, if any
    operation = source[source.rfind("migrations.", 0, at) : end if end != -1 else None]
    (trigger,) = OBJECT_NAME.findall(operation)[:1]  # the operation's trigger or constraint, before or after
    later = [
        other.name
        for other in sorted(path.parent.glob("0*.py"))
        if other.name > path.name and trigger in OBJECT_NAME.findall(other.read_text())
    ]
    assert later == [], f"{trigger} is created again by {later}: mutate the newest"
