import pytest

from core.integrity import StateMachine


def test_a_machine_is_its_edges_births_included():
    machine = StateMachine(
        name="thing_status_transition", field="status", transitions=[(None, "new"), ("new", "done"), ("new", "done")]
    )
    assert machine.initial == ["new"]
    assert machine.transitions == [("new", "done")]
    assert machine.states == {"new", "done"}
    assert machine.allows("new", "done") and machine.allows("done", "done") and not machine.allows("done", "new")


@pytest.mark.parametrize(
    "name, transitions, refusal",
    [
        ("thing_status_transition", [("new", "done")], "birth"),
        ("thing_status", [(None, "new")], "_transition"),
        ("thing_status_transition", [(None, "new'; DROP TABLE x; --")], "plain identifier"),
    ],
)
def test_a_machine_that_cannot_be_enforced_is_refused_when_declared(name, transitions, refusal):
    with pytest.raises(ValueError, match=refusal):
        StateMachine(name=name, field="status", transitions=transitions)
