"""The check every library hook's tests share: a library whose method has another form gets one warning, no patch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from streams.library_hooks import MethodHook


def warnings_of_refused_install(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, owner: type,
                                name: str, replacement: Any, install: Callable[[], bool], logger: str,
                                hooks: Iterable[MethodHook]) -> list[str]:
    """Puts ``replacement`` in place of ``owner.name`` (``None``: removes it), then installs twice: both refused, and
    the warnings logged (once per process, not per worker start, so ``hooks`` start with none logged)."""
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement)
    for hook in hooks:
        monkeypatch.setattr(hook, "warned", set())
    with caplog.at_level(logging.WARNING, logger=logger):
        assert not install()
        assert not install()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
