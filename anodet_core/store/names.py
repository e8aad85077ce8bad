"""Names and uris that become store paths: checked before any path is built, so nothing leaves the store."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from ..text import printable

# fullmatch: with match, "$" would also accept a name ending in a newline; a leading letter or digit refuses "."
# and ".."
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # "s3:", "file:", "memory:", a drive letter "C:"


def check_name(value: str, what: str) -> str:
    """Names become path segments: refuse anything that could escape or confuse the layout.

    ValueError (naming ``what``, the value escaped by ``repr``) unless ``value`` is a non-empty string of letters,
    digits, '_', '-', '.' starting with a letter or digit: no '/', no '..', no control character.
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.'")
    return value


def check_uri(uri: object, allowed_prefixes: Sequence[str] = ()) -> str:
    """A manifest's (or a report's) ``uri`` confined to the store; ValueError saying why not.

    Refused always: a value that is not a non-empty string, a control character (NUL included), a backslash, a
    '..' segment, an absolute path (a manifest's paths are relative to the store). Refused unless it lies under one
    of ``allowed_prefixes`` (ANODET_ALLOWED_URI_PREFIXES, URL prefixes matched at a '/' boundary): a URL or any
    other ``protocol:`` path. The uri is escaped in the message.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"uri {uri!r} is not a path")
    if printable(uri) != uri:
        raise ValueError(f"uri {uri!r} holds a control character")
    if "\\" in uri:
        raise ValueError(f"uri {uri!r} holds a backslash")
    if ".." in uri.split("/"):
        raise ValueError(f"uri {uri!r} climbs out of its folder ('..')")
    if uri.startswith("/"):
        raise ValueError(f"uri {uri!r} is absolute: outside the store")
    if any(uri.startswith(p if p.endswith("/") else f"{p}/") for p in allowed_prefixes):
        return uri
    if "://" in uri or _SCHEME_RE.match(uri):
        raise ValueError(f"uri {uri!r} is a URL: outside the store (see ANODET_ALLOWED_URI_PREFIXES)")
    return uri



def check_night(night: str | dt.date) -> str:
    """Normalise a night to ``YYYY-MM-DD`` (accepts a date)."""
    if isinstance(night, dt.date):
        return night.isoformat()
    try:
        return dt.date.fromisoformat(str(night)).isoformat()
    except ValueError as exc:
        raise ValueError(f"invalid night {night!r}: expected YYYY-MM-DD") from exc
