"""Statistics for site owners: the report (and, later, the live dashboard)."""
