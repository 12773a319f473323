"""What a verified unsubscribe does: one store write, scoped to the list or to everything.

Shared by the web endpoint and by `bounces import` (mailto replies, opt-out reports), so both
write the same row with reason ``unsubscribe``, keyed by the canonical address key (any letter
case of an unsubscribed address is unsubscribed). Imports config, recipients.address and the
store protocol only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mailctl.config.profiles import ProfilesFile, UnsubscribeScope
from mailctl.errors import ConfigError
from mailctl.recipients.address import address_key
from mailctl.store.base import Store, StoredKey
from mailctl.unsubscribe.tokens import Signer, TokenError, UnsubscribeToken, load_secret

__all__ = ["Unsubscriber", "optional_unsubscriber", "unsubscriber_for"]


@dataclass(frozen=True)
class Unsubscriber:
    """Verifies tokens (against every secret the profiles use) and applies unsubscribes."""

    signers: tuple[Signer, ...]
    scope_of: Callable[[Store, str], UnsubscribeScope]

    def verify(self, token: str, now: float) -> UnsubscribeToken:
        """What the token says, if any of our secrets signed it; raises `TokenError`."""
        error: TokenError | None = None
        for signer in self.signers:
            try:
                return signer.verify(token, now)
            except TokenError as exc:
                # An expired token with a good signature is "expired", not "tampered".
                if error is None or exc.problem.value == "expired":
                    error = exc
        assert error is not None
        raise error

    def form_check(self, token: str) -> str:
        return self.signers[0].form_check(token)

    def list_for(self, store: Store, token: UnsubscribeToken) -> str | None:
        """The list an unsubscribe applies to: the token's, or None for everything."""
        scope = self.scope_of(store, token.campaign)
        return token.list_name if scope is UnsubscribeScope.LIST else None

    def apply(self, store: Store, token: UnsubscribeToken, *, source: str, now: float) -> bool:
        """Unsubscribe the token's address (once); True when it is new."""
        with store.transaction():
            return store.unsubscribe(
                address_key(token.address),
                list_name=self.list_for(store, token),
                source=source,
                now=now,
            )

    def apply_many(
        self, store: Store, requests: list[tuple[UnsubscribeToken, str]], *, now: float
    ) -> list[bool]:
        """Several unsubscribes (token, source) in one transaction: one commit for a burst."""
        with store.transaction():
            return [
                store.unsubscribe(
                    address_key(token.address),
                    list_name=self.list_for(store, token),
                    source=source,
                    now=now,
                )
                for token, source in requests
            ]

    def already(self, store: Store, token: UnsubscribeToken) -> bool:
        return store.unsubscribed(address_key(token.address), self.list_for(store, token))


def optional_unsubscriber(
    profiles: ProfilesFile | None, database: str | None, stored: StoredKey | None = None
) -> Unsubscriber | None:
    """`unsubscriber_for`, or None when no secret is available (`bounces import`: tokens in
    unsubscribe mail are then simply not trusted)."""
    try:
        return unsubscriber_for(profiles, database, stored)
    except ConfigError:
        return None


def unsubscriber_for(
    profiles: ProfilesFile | None, database: str | None, stored: StoredKey | None = None
) -> Unsubscriber:
    """The secrets and scopes of every profile (a token names its campaign, the campaign its
    profile). Without a profiles file: the key file next to the database, scope ``all``."""
    location = (
        Path(database)
        if database is not None and "://" not in database and database != ":memory:"
        else None
    )
    envs: Iterable[str | None] = (
        [p.unsubscribe.secret_env for p in profiles.profiles.values()] if profiles else [None]
    )
    # Keys rotated out still verify (listed last: new tokens are checked first).
    if profiles:
        envs = [
            *envs,
            *(
                p.unsubscribe.previous_secret_env
                for p in profiles.profiles.values()
                if p.unsubscribe.previous_secret_env
            ),
        ]
    secrets: list[bytes] = []
    for env in dict.fromkeys(envs):
        try:
            secret = load_secret(env, location, stored)
        except ConfigError:
            if env is None:
                raise
            continue  # a profile whose variable is unset in this environment signs nothing here
        if secret not in secrets:
            secrets.append(secret)
    if not secrets:
        raise ConfigError("no unsubscribe secret: set the variable the profile's secret_env names")

    def scope_of(store: Store, campaign: str) -> UnsubscribeScope:
        if profiles is None:
            return UnsubscribeScope.ALL
        row = store.get_campaign(campaign)
        profile = profiles.profiles.get(row["profile"]) if row else None
        return profile.unsubscribe.scope if profile else UnsubscribeScope.ALL

    return Unsubscriber(tuple(Signer(secret) for secret in secrets), scope_of)
