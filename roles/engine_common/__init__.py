"""Steps the engine roles share (not a component of its own)."""
