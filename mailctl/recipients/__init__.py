"""Recipient lists: streaming, validated, deduplicated CSV import and address normalisation.

Must not import cli, delivery, bounces, report or sim.
"""
