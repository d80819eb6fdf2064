"""Data files shipped with syncd (see pyproject: package-dir)."""
