"""Bounce, complaint and unsubscribe mail in; suppressions out.

`mailbox` reads mbox / Maildir / .eml / folders / stdin, `remote` IMAP and POP3 mailboxes
(keeping their import marks in the store); `parse` turns one message into a report (RFC 3464
DSN, RFC 5965 ARF, free text via `freetext`), classified with the shared `mailctl.replies`
classifier; `suppression` correlates reports with sent messages and applies the suppression
policy through the store (unsubscribe mail through mailctl.unsubscribe). Must not import cli,
delivery, report or sim.
"""
