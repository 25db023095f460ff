"""Country, region and city from an IP address through a MaxMind-format `.mmdb` database.

No database configured means no location: the columns stay empty and nothing fails.
Look-ups are cached by address because traffic repeats addresses within a batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import geoip2.database
import geoip2.errors


class Place(NamedTuple):
    country: str
    region: str
    city: str


NOWHERE = Place("", "", "")


class GeoLocator:
    def __init__(self, path: str | None) -> None:
        self._reader = geoip2.database.Reader(path) if path else None
        self.locate = lru_cache(maxsize=65536)(self._locate)

    def _locate(self, ip: str) -> Place:
        if self._reader is None or not ip:
            return NOWHERE
        try:
            rec = self._reader.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
            return NOWHERE
        except Exception:  # a database of another type (e.g. Country) or a damaged record
            try:
                return Place(self._reader.country(ip).country.iso_code or "", "", "")
            except Exception:
                return NOWHERE
        region = rec.subdivisions.most_specific.name if rec.subdivisions else ""
        return Place(rec.country.iso_code or "", region or "", rec.city.name or "")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
