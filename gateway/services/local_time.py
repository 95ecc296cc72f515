"""A district's local time: times are stored in UTC (naive) and shown in the district's IANA time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.models import District
from gateway.services.errors import InvalidInput


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The zone; UTC for a name this machine does not know (a stored name outlived its tz database entry)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def zone_name(name: str) -> str:
    """A valid IANA zone name as given (e.g. America/Chicago), or InvalidInput naming the field."""
    name = name.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {name!r}: give an IANA name such as America/Chicago or Europe/London",
            fields={"time_zone": ["An IANA time zone name, e.g. America/Chicago."]},
        ) from None
    return name


def to_local(moment: datetime, zone_name: str) -> datetime:
    """A stored (naive UTC) time in the district's zone."""
    return moment.replace(tzinfo=UTC).astimezone(zone(zone_name))


def local_midnight_utc(now: datetime, zone_name: str, days_back: int) -> datetime:
    """The start of the district's local day `days_back` days before now's, as stored (naive UTC)."""
    local = to_local(now, zone_name)
    # Back by calendar days on the wall clock, then to UTC: a day across a DST change is 23 or 25 hours.
    day = local.date() - timedelta(days=days_back)
    start = datetime(day.year, day.month, day.day, tzinfo=zone(zone_name))
    return start.astimezone(UTC).replace(tzinfo=None)


def day_start_utc(day: date, zone_name: str) -> datetime:
    """When the district's calendar day `day` begins, as stored (naive UTC)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone(zone_name))
    return start.astimezone(UTC).replace(tzinfo=None)


def shown(moment: datetime | None, zone_name: str, *, seconds: bool = False) -> str:
    """How the dashboard writes a time: local, with the zone's abbreviation (e.g. 2026-12-07 08:03 EST)."""
    if moment is None:
        return ""
    local = to_local(moment, zone_name)
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def district_zone(session: Session, district_id: str) -> str:
    """The district's time zone name (UTC for an unknown district)."""
    return session.scalar(select(District.time_zone).where(District.id == district_id)) or "UTC"
