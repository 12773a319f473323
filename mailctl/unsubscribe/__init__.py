"""Unsubscribes: signed tokens and links (`tokens`), applying one (`apply`), and the small web
app that receives RFC 8058 one-click POSTs and confirmation forms (`web`).

`tokens` and `apply` are domain code (standard library, config, recipients, store); `web`
adds Starlette and is imported only by the CLI's `unsubscribe serve`. Must not import cli,
delivery, report or sim.
"""
