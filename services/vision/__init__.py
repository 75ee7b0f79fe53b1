"""Image encoder service (not yet implemented: see issue 3)."""
