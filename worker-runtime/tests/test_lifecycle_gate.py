"""CLIPFLEET_FAULT=gate@N:file=PATH: a test hook that holds a rank before step N until PATH exists."""

import threading

import pytest

from clipfleet_worker.errors import ConfigError
from clipfleet_worker.lifecycle import FaultInjection


def test_gate_holds_the_step_until_the_file_exists(tmp_path):
    go = tmp_path / "go"
    fault = FaultInjection(f"gate@2:file={go}", rank=0, attempt=0)
    fault.before_update(1)  # another step: no wait
    passed = threading.Event()
    t = threading.Thread(target=lambda: (fault.before_update(2), passed.set()))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not passed.is_set(), "step 2 waits for the file"
    go.write_text("")
    t.join(30)
    assert passed.is_set()


def test_gate_needs_a_file_and_other_ranks_pass():
    with pytest.raises(ConfigError, match="gate needs file=PATH"):
        FaultInjection("gate@2", rank=0, attempt=0)
    FaultInjection("gate@2:rank=1:file=/nonexistent", rank=0, attempt=0).before_update(2)


def test_several_hooks_each_with_its_own_attempt(tmp_path):
    spec = f"gate@40:file={tmp_path / 'a'}:attempt=1,raise@55:attempt=2"
    first = FaultInjection(spec, rank=0, attempt=1)
    second = FaultInjection(spec, rank=0, attempt=2)
    assert [(h.kind, h.step) for h in first.hooks] == [("gate", 40)]
    assert [(h.kind, h.step) for h in second.hooks] == [("raise", 55)]
    first.before_update(55)  # the second attempt's hook is not the first's
    with pytest.raises(RuntimeError, match="injected fault at step 55"):
        second.before_update(55)
    with pytest.raises(ConfigError, match="unknown kind 'boom'"):
        FaultInjection("gate@1:file=/x,boom@2", rank=0, attempt=0)
