"""tasks/core/engine.py: what a chunk task's final state becomes for the run (its report or an error)."""

from __future__ import annotations

from prefect.states import Completed, Failed, Pending, Running

from tasks.core.engine import state_report
from tasks.core.outcomes import ChunkReport


def test_a_completed_state_gives_its_report() -> None:
    report = ChunkReport(index=3, size=2, succeeded=2)
    assert state_report(Completed(data=report)) == report


def test_a_failed_state_gives_its_exception() -> None:
    outcome = state_report(Failed(data=ValueError("bad chunk")))
    assert isinstance(outcome, ValueError) and str(outcome) == "bad chunk"


def test_a_state_that_never_finished_is_an_error_naming_what_to_do_not_a_crash() -> None:
    for state in (Pending(), Running()):
        outcome = state_report(state)
        assert isinstance(outcome, RuntimeError)
        assert state.name in str(outcome) and "rerun with the same run_key" in str(outcome)
