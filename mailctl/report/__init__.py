"""Reports of what happened to the mail: data (JSON), terminal tables, one HTML page.

`data` aggregates from the store; `columns`, `tables` and `html` only format its result.
Nothing here prints (the CLI does). Must not import cli, delivery or bounces.
"""
