"""The bytes of one message: templates, headers, tracking ids, VERP and DKIM.

`render` compiles templates once and assembles each message; `tracking` is the one definition
of the tracking id, VERP address and X-Mailctl-ID header; `dkim` signs and manages keys.
Must not import cli, delivery, bounces, report, sim or the store.
"""
