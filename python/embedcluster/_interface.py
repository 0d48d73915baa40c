"""Which interface the user is in, so that a message names what they can do there.

The same check runs under the Python API and under the ``embedcluster`` command. Advice in an
error message must name a keyword in Python (``size=``) and a flag on the command line
(``--image-size``); :func:`advice` picks the text for the interface in use, which the command
line sets with :func:`command_line` around each command.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

_INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar("embedcluster_interface", default="python")


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Marks the code run inside the block as driven by the ``embedcluster`` command."""
    token = _INTERFACE.set("cli")
    try:
        yield
    finally:
        _INTERFACE.reset(token)


def in_command_line() -> bool:
    """True inside :func:`command_line`, False under the Python API."""
    return _INTERFACE.get() == "cli"


def advice(python: str, cli: str) -> str:
    """``python`` (advice that names keywords) under the Python API, ``cli`` (the same advice
    with command-line flags) inside :func:`command_line`."""
    return cli if in_command_line() else python
