"""Data files (sql/, schema/) mapped here by pyproject package-dir for installed copies."""
