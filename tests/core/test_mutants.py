"""``make mutants`` stays runnable: every guard it removes is still in the code, once.

The mutants themselves take minutes and run outside ``make test``; a refactor that moves a
guard makes its mutant STALE, which only that run would tell. This check is instant.
"""

import json
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
