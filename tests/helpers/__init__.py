"""Helpers shared by test modules: the fake clock, workspaces and CLI runners, sim typing,
bounce-corpus label matching.

Imports mailctl and the standard library only; never a test module, conftest or bench/.
"""
