"""Sending a campaign: from a campaign file to recorded outcomes.

`campaigns` prepares (load, import, queue); `run` owns one send run (lock, crash recovery,
signals); `engine` wires `claim` -> `route` -> `dispatch` -> `record`, with `outcome` saying
what a reply means for a message; `transport` speaks SMTP (aiosmtplib) and `sandbox` is the
embedded local server. Must not import cli, bounces, report or sim, and never prints.
"""
