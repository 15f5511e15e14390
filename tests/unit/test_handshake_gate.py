"""The cap on connections in their handshake (replicad.transport.gate, I9)."""

from __future__ import annotations

import pytest

from replicad.transport.gate import HandshakeGate


def test_caps_per_source_and_in_total() -> None:
    gate = HandshakeGate(max_total=5, max_per_source=2)
    assert gate.admit("10.0.0.1") and gate.admit("10.0.0.1")
    assert not gate.admit("10.0.0.1")  # a third from one address
    assert gate.admit("10.0.0.2") and gate.admit("10.0.0.2") and gate.admit("10.0.0.3")
    assert not gate.admit("10.0.0.4")  # five in progress
    assert gate.refused == 2 and gate.in_progress == 5
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.4")
    assert not gate.admit("10.0.0.1")


def test_every_admission_is_released_once() -> None:
    gate = HandshakeGate(max_total=3, max_per_source=3)
    for _ in range(3):
        assert gate.admit("a")
    for _ in range(3):
        gate.release("a")
    assert gate.in_progress == 0
    with pytest.raises(ValueError, match="without a matching admit"):
        gate.release("a")
