"""Helpers shared by test modules: the fake clock, workspaces and CLI runners, sim typing.
(Bounce-corpus label matching, shared with bench/, is scripts/bounce_labels.py.)

Imports mailctl and the standard library only; never a test module, conftest or bench/.
"""
