"""Registers every endpoint beyond the consent core on the consent API router."""

from __future__ import annotations

import importlib

from .api import ConsentAPI

#: Modules with a `register(api)` function; optional ones may not exist yet in a build.
_MODULES = ("consentmw.beacon_api", "consentmw.assets", "consentmw.admin", "consentmw.rights",
            "consentmw.admin_api")


def register_all(api: ConsentAPI) -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(api)
