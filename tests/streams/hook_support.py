"""What the tests of the library hooks (``streams.library_hooks``) share: the library as shipped around each test,
scratch topics on the broker, and the check that a library whose method has another form gets one warning and no
patch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from secstream.config import Settings
from secstream.topics import TopicSpec, delete_topics, ensure_topics
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


def library_as_shipped(uninstall: Callable[[], None]) -> Iterator[None]:
    """Body of an autouse fixture: the hook removed before and after each test."""
    uninstall()
    try:
        yield
    finally:
        uninstall()


@contextmanager
def scratch_topics(settings: Settings, names: Sequence[str], partitions: int, purpose: str) -> Iterator[None]:
    """``names`` created with ``partitions`` partitions each (kept an hour), deleted afterwards."""
    ensure_topics(settings, [TopicSpec(name, partitions, purpose, {"retention.ms": "3600000"}) for name in names])
    try:
        yield
    finally:
        delete_topics(settings, list(names))
