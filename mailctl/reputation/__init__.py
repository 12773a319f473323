"""Protecting sending IPs: lanes, warm-up and the signals that steer them.

`lanes` (IP x provider: token buckets, connection caps, pauses, gradual ramp), `warmup`
(per-IP plans, per-provider caps, sending windows; the schedule maths is in
`mailctl.warmup_schedule`), `budget` (today's caps from the store), `status` (where each IP
stands today), `control` (lanes suspended and resumed by hand), `signals` (what counts as a
throttle, a block or a hard bounce). Must not import cli, delivery, bounces, report or sim.
"""
