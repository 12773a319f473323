"""reputation."""
