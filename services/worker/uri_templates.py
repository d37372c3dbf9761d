"""URI templates of scheduled batches: ``s3://bucket/events/date={date}/`` filled from the run's
scheduled time, in the schedule's time zone.

Pure functions (no clock, no I/O beyond the time-zone database): the CLI checks templates when a
schedule is created, the workflow fills them from the time Temporal scheduled the run.
"""

from __future__ import annotations

import string
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Placeholder -> strftime format. Fixed widths, so folders sort by time.
PLACEHOLDERS: dict[str, str] = {
    "date": "%Y-%m-%d",  # 2026-12-01
    "year": "%Y",
    "month": "%m",  # 01-12
    "day": "%d",  # 01-31
    "hour": "%H",  # 00-23
    "minute": "%M",  # 00-59
    "datetime": "%Y%m%dT%H%M%S",  # 20261201T000000: compact ISO 8601, local to the time zone
}
VALID = ", ".join("{" + name + "}" for name in PLACEHOLDERS)


class TemplateError(ValueError):
    """A template naming an unknown placeholder, or with unbalanced braces."""


def placeholders(template: str) -> list[str]:
    """The placeholder names in ``template`` (``{{`` and ``}}`` are literal braces); refuses
    unknown names, format specs and unbalanced braces, listing the valid names."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        raise TemplateError(
            f"{template!r}: unbalanced braces (write {{{{ and }}}} for literal ones); placeholders: {VALID}"
        ) from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise TemplateError(f"{template!r}: unknown placeholder {{{field}}}; valid: {VALID}")
        names.append(name)
    return names


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError(
            f"unknown time zone {name!r}: give an IANA name such as UTC, Europe/Berlin or America/New_York"
        ) from None


def fill(template: str, when: datetime, time_zone: str) -> str:
    """``template`` with its placeholders set from ``when`` (timezone-aware) in ``time_zone``."""
    placeholders(template)
    local = when.astimezone(zone(time_zone))
    return template.format(**{name: local.strftime(fmt) for name, fmt in PLACEHOLDERS.items()})


def fill_uris(uris: str | list[str], when: datetime, time_zone: str) -> str | list[str]:
    if isinstance(uris, str):
        return fill(uris, when, time_zone)
    return [fill(uri, when, time_zone) for uri in uris]
