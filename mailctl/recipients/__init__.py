"""recipients."""
