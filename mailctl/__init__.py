"""mailctl: bulk email sending and IP warm-up that protects sender reputation."""

__version__ = "0.1.0"
