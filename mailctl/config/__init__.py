"""Configuration: profiles.yaml, campaign YAML and the provider rules file, read into frozen,
validated objects whose errors name the file, the line and the key path.

The bottom of the domain layer: config imports mailctl.errors and nothing else of mailctl's
domain (never replies, dns, reputation, delivery); those packages import config.
"""
