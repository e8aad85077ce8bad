"""Whether a progress bar is drawn: only on a terminal."""

from __future__ import annotations

import sys


def bars_enabled(progress: bool) -> bool:
    """True when ``progress`` is asked for and stderr (where tqdm draws) is a terminal.

    A bar written to a file or a pipe is one carriage-return update per step: a log of megabytes that says
    nothing the epoch summary lines do not. Pass ``disable=not bars_enabled(progress)`` to tqdm.
    """
    stream = sys.stderr
    return progress and stream is not None and stream.isatty()
