"""Everything that asks DNS: the resolver, MX rollup to a mailbox provider, the preflight.

`resolver` (live dnspython or zone files), `providers` (recipient domain -> MX -> provider,
cached), `spf` (the SPF evaluator), `auth_checks` (DKIM, DMARC), `host_checks` (PTR/FCrDNS,
HELO, bounce MX), `checks` (the whole `mailctl check` report) and `preflight` (the fast subset
before a first send). Must not import cli, delivery, bounces, report or sim.
"""
