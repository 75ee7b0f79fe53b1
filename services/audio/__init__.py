"""Audio encoder service and speech synthesis (not yet implemented: see issue 3)."""
