"""Text that reaches a terminal, a log or a Markdown report: ids and messages come from outside (manifests,
file names, exceptions) and may hold control characters (NUL, newlines, ANSI escapes)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(value: object) -> str:
    """``str(value)`` with every control character escaped (``\\n``, ``\\x1b``, ...): safe to print or log.

    Printable text, including non-ASCII letters, is unchanged; the escape is the one ``repr`` would write.
    """
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], str(value))
