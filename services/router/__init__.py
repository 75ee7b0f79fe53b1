"""Router service: gate, fusion, heads, public API (not yet implemented: see issue 4)."""
