"""The banner's browser files, shipped as the package `consentmw.static` (see pyproject.toml)."""
