"""Replacing one private method of a library class, only if it still has the form the replacement relies on.

The stream worker changes four behaviours of aiokafka and Faust that have no public switch (``batch_build``,
``fetch_wait``, ``group_membership``, ``start_positions``). Each replacement is a ``MethodHook``: before installing
it checks that the method exists, is (or is not) a coroutine function and takes the expected parameters; on a
mismatch it logs one warning naming the library version and what the worker does without it, and leaves the
library alone.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]
_MARK = "__secstream_hook__"


@dataclass(eq=False)
class MethodHook:
    """``owner`` returns the class (imported late); ``own``: the method must be defined on that class itself, not
    only declared by a base class; ``feature`` and ``without_it`` name what the warning says is not applied."""

    owner: Callable[[], type]
    name: str
    parameters: tuple[str, ...]
    coroutine: bool
    wrap: Wrapper
    package: str
    feature: str
    without_it: str
    logger: logging.Logger
    own: bool = False
    original: Callable[..., Any] | None = field(default=None, init=False)
    warned: set[str] = field(default_factory=set, init=False)  # each problem is logged once per process

    @property
    def installed(self) -> bool:
        return self.original is not None

    def install(self) -> bool:
        """Replace the method with the wrapper (idempotent). False, with one warning, if it has another form."""
        if self.original is not None:
            return True
        owner = self.owner()
        method = vars(owner).get(self.name) if self.own else inspect.getattr_static(owner, self.name, None)
        method = getattr(method, "__wrapped__", method) if getattr(method, _MARK, False) else method
        problem = self.problem(method)
        if problem:
            if problem not in self.warned:
                self.warned.add(problem)
                self.logger.warning("%s is not applied: %s %s's %s %s; %s", self.feature, self.package,
                                    _version(self.package), owner.__name__, problem, self.without_it)
            return False
        assert method is not None
        wrapper = self.wrap(method)
        setattr(wrapper, _MARK, True)
        setattr(owner, self.name, wrapper)
        self.original = method
        return True

    def uninstall(self) -> None:
        """Put the library's own method back (no-op when not installed)."""
        if self.original is not None:
            setattr(self.owner(), self.name, self.original)
            self.original = None

    def problem(self, method: Any) -> str:
        """What keeps ``method`` from being replaced; empty if nothing does."""
        if method is None or not callable(method):
            return f"has no {self.name}"
        if inspect.iscoroutinefunction(method) != self.coroutine:
            return f"{self.name} is {'not ' if self.coroutine else ''}a coroutine function"
        found = tuple(inspect.signature(method).parameters)
        if found != self.parameters:
            return f"{self.name} takes {found}, not {self.parameters}"
        return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(unknown version)"
