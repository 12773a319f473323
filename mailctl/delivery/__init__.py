"""Sending a campaign: from a campaign file to recorded outcomes.

`campaigns` prepares (load, import, queue); `preview` renders a dry run and decides the
first-send DNS check; `campaign_status` pauses, resumes and cancels; `run` owns one send run
(lock, crash recovery, sandbox, signals, run bookkeeping); `engine` wires `claim` -> `route`
-> `dispatch` -> `record`, with `outcome` saying what a reply means for a message;
`transport` speaks SMTP (aiosmtplib) and `sandbox` is the embedded local server. Must not
import cli, bounces, report or sim, and never prints.
"""
