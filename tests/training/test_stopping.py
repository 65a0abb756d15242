"""Early-stop requests: SIGTERM, Ctrl-C and the time budget, agreed at sync steps when there are several processes."""
import os
import signal

import pytest

from lgmsnet_jax.training import stopping


def test_sigterm_is_caught_inside_and_the_previous_handler_restored_after():
    before = signal.getsignal(signal.SIGTERM)
    with stopping.StopRequests() as stops:
        assert stops.reason(3, 0) is None
        os.kill(os.getpid(), signal.SIGTERM)  # would end this test process without the handler
        assert stops.reason(3, 0) == "SIGTERM received"
        assert stops.reason(0, 0) == "SIGTERM received"  # even before the first step of the invocation
    assert signal.getsignal(signal.SIGTERM) is before


def test_first_ctrl_c_asks_for_a_checkpointed_stop_and_a_second_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with stopping.StopRequests() as stops:
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt here without the handler
        assert stops.reason(4, 0) == "SIGINT received"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM does not change the reason
        assert stops.reason(4, 0) == "SIGINT received"
    assert signal.getsignal(signal.SIGINT) is before


def test_time_budget_allows_one_step_then_stops():
    stops = stopping.StopRequests(1e-9)
    assert stops.reason(5, 5) is None  # at least one step per invocation
    assert stops.reason(6, 5) == "config.max_run_seconds=1e-09 reached"
    assert stopping.StopRequests(0).reason(10**6, 0) is None  # 0: no budget


def test_several_processes_decide_only_at_sync_steps():
    # One real process standing in for several: the all-gather path runs, and nothing stops between sync steps.
    stops = stopping.StopRequests(process_count=2, sync_every=10)
    stops.signalled = signal.SIGTERM
    assert [stops.reason(s, 0) for s in (7, 9, 11)] == [None, None, None]
    assert stops.reason(10, 0) == "SIGTERM received"
