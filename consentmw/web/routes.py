"""Registers every endpoint beyond the consent core on the consent API router.

Order matters only where a module wraps another's route (rights wraps DELETE /choice).
"""

from __future__ import annotations

from consentmw.web import admin, admin_api, assets, beacon_api, dashboard, rights
from consentmw.web.api import ConsentAPI


def register_all(api: ConsentAPI) -> None:
    for module in (beacon_api, assets, admin, rights, admin_api, dashboard):
        module.register(api)
