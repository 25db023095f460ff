"""A tiny GeoIP database for the demo, built at start with mmdb-writer (the `demo` extra).

The demo is visited from 127.0.0.1 (or a private address, from a container), which no real
GeoIP database places anywhere, so its "countries" panel would stay empty. This one places
loopback and the private ranges in made-up but real cities, so a newcomer sees that panel
filled. It is for the demo only: a real site points `geoip_db` at a MaxMind-format database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: network -> (ISO country, country name, city); documented in the README's demo section
DEMO_PLACES: dict[str, tuple[str, str, str]] = {
    "127.0.0.0/8": ("KZ", "Kazakhstan", "Almaty"),
    "::1/128": ("KZ", "Kazakhstan", "Almaty"),
    "10.0.0.0/8": ("DE", "Germany", "Berlin"),
    "172.16.0.0/12": ("FR", "France", "Paris"),
    "192.168.0.0/16": ("GB", "United Kingdom", "London"),
    "fc00::/7": ("NL", "Netherlands", "Amsterdam"),
}


def build_demo_geoip(path: Path) -> Path | None:
    """Write the demo database to `path` (rebuilt each start: it takes milliseconds) and return
    it, or None when mmdb-writer is not installed (the demo then runs without locations)."""
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet
    except ImportError:
        return None
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"], ipv4_compatible=True)
    for network, (iso, country, city) in DEMO_PLACES.items():
        record: dict[str, Any] = {"country": {"iso_code": iso, "names": {"en": country}},
                                  "city": {"names": {"en": city}}}
        writer.insert_network(IPSet([network]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(path)
    return path
