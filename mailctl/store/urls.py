"""Database URLs as mailctl prints them: never with their password.

A leaf of the store package (the factory and the PostgreSQL backend both use it, so neither
imports the other for it). Imports only the standard library.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """The URL without its password (never printed)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("://", 1)[0] + "://…"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
