"""``replicad import`` shows a progress bar only on a terminal, for large trees."""

from __future__ import annotations

import io

import pytest

from replicad.cli import import_cmd


def test_no_bar_when_not_a_terminal_or_small() -> None:
    with import_cmd.progress_bar(10_000, tty=False) as bar:
        assert isinstance(bar, import_cmd._NoProgress)
    with import_cmd.progress_bar(import_cmd.PROGRESS_MIN - 1, tty=True) as bar:
        assert isinstance(bar, import_cmd._NoProgress)


def test_bar_on_a_terminal_for_a_large_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with import_cmd.progress_bar(import_cmd.PROGRESS_MIN, tty=True) as bar:
        assert isinstance(bar, import_cmd._Bar)
        bar.advance(import_cmd.PROGRESS_MIN)
