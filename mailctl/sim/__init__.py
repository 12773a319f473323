"""Simulated mailbox providers on aiosmtpd.

A simulated provider is an aiosmtpd handler with state: it answers with the real reply texts of
Google, Microsoft and Yahoo (see PROVIDERS.md), throttles per source IP, greylists, drops
connections, caps messages per connection and writes RFC 3464 DSNs to an mbox. It serves as the
SMTP peer of the send engine's tests (never a mock of the client) and for ``mailctl sim``
rehearsals.

Modules, bottom up: ``replies`` (reply texts), ``behaviours`` (settings, presets and the state
throttling and greylisting keep), ``events`` (records and progress events), ``dsn`` (DSNs and
the mbox), ``handler`` (the aiosmtpd handler and protocol), ``servers`` (running them).

Nothing here prints: progress goes to an ``on_event`` callback. Must not import the CLI,
delivery, bounces or report: the sim stands apart from the code it tests (it may use the
domain's format definitions and the error family).
"""
