"""The schedule settings of ``anodet serve`` (flows/deployments.py): cron expressions, depots, time zone.

Checked here, without Prefect (the core never imports it); :mod:`anodet_core.config` uses the types
:data:`Cron`, :data:`Depots` and :data:`Timezone` for its fields ``nightly_cron``/``retrain_cron``, ``depots``
and ``timezone``.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

# Cron is checked here, without Prefect (the core never imports it), as a subset of what Prefect's croniter takes
# (tests/unit/flows/test_deployments.py checks the two agree): five fields of numbers, names, a-b ranges, steps and
# lists, or an @alias. croniter's extras (seconds and year fields, L, #, wrapping ranges) are refused.
_CRON_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (lowest, highest, names) of minute, hour, day of month, month, day of week (0 and 7 are Sunday)
_CRON_FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, _MONTHS), (0, 7, _WEEKDAYS))
_CRON_ITEM_RE = re.compile(r"(\*|[0-9a-z]+)(?:-([0-9a-z]+))?(?:/([0-9]+))?")
_CRON_HELP = ("not a cron expression: use five fields (minute hour day month weekday) of numbers, names, ranges, steps and "
              "lists, as in '30 1 * * mon-fri', or @daily, @weekly, ...")


def _cron_value(text: str, lowest: int, highest: int, names: tuple[str, ...]) -> int:
    if text in names:
        return lowest + names.index(text)  # jan is 1, sun is 0
    if not re.fullmatch(r"[0-9]{1,2}", text) or not lowest <= int(text) <= highest:
        raise ValueError(text)
    return int(text)


def _check_cron(value: str) -> str:
    fields = value.lower().split()
    if len(fields) == 1 and fields[0] in _CRON_ALIASES:
        return value
    try:
        if len(fields) != len(_CRON_FIELDS):
            raise ValueError(value)
        for field, (lowest, highest, names) in zip(fields, _CRON_FIELDS):
            for item in field.split(","):
                m = _CRON_ITEM_RE.fullmatch(item)
                if not m or (m[1] == "*" and m[2]) or (m[3] is not None and int(m[3]) == 0):
                    raise ValueError(item)
                if m[1] != "*":
                    start = _cron_value(m[1], lowest, highest, names)
                    if m[2] and _cron_value(m[2], lowest, highest, names) < start:
                        raise ValueError(item)
    except ValueError:
        raise ValueError(_CRON_HELP) from None
    return value


def _is_cron(text: str) -> bool:
    try:
        _check_cron(text.strip())
    except ValueError:
        return False
    return True


class DepotCron(NamedTuple):
    """One entry of ``ANODET_DEPOTS``: a depot and its own nightly cron, "" where ``ANODET_NIGHTLY_CRON`` applies."""

    depot: str
    cron: str = ""


def _parse_depots(value: Any) -> Any:
    # "north,south@30 1 * * *"; a comma that continues a depot's own cron belongs to it ("south@0,30 1 * * *")
    if not isinstance(value, str):
        return value
    entries: list[str] = []
    for piece in value.split(","):
        last = entries[-1] if entries else ""
        if "@" in last and (not _is_cron(last.partition("@")[2]) or _is_cron(f"{last},{piece}".partition("@")[2])):
            entries[-1] = f"{last},{piece}"
        else:
            entries.append(piece)
    out = []
    for entry in filter(str.strip, entries):
        depot, at, cron = entry.partition("@")
        if at and not cron.strip():
            raise ValueError(f"{entry.strip()!r}: no cron after '@'")
        out.append(DepotCron(depot.strip(), cron.strip()))
    return tuple(out)


def _check_depots(value: tuple[DepotCron, ...]) -> tuple[DepotCron, ...]:
    from .store.names import check_name  # depot names become store paths

    for entry in value:
        check_name(entry.depot, "depot")
        if entry.cron and not _is_cron(entry.cron):
            raise ValueError(f"depot {entry.depot}: {entry.cron!r} is {_CRON_HELP}")
    names = [e.depot for e in value]
    if len(set(names)) != len(names):
        raise ValueError(f"a depot is listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return value


@functools.cache
def _iana_zones() -> frozenset[str]:
    # ~20 ms a call, and Settings are validated often; Factory and localtime are files of the zone folder, not zones
    return frozenset(zoneinfo.available_timezones()) - {"Factory", "localtime"}


def _check_timezone(value: str) -> str:
    # the names Prefect takes for a schedule's timezone; "" is this machine's (local_timezone())
    if value and value not in _iana_zones():
        raise ValueError("not an IANA time zone name (Europe/Paris, UTC, America/New_York); empty: this machine's")
    return value


Cron = Annotated[str, AfterValidator(_check_cron)]
Depots = Annotated[tuple[DepotCron, ...], NoDecode, BeforeValidator(_parse_depots), AfterValidator(_check_depots)]
Timezone = Annotated[str, AfterValidator(_check_timezone)]
