"""What an SMTP reply or a bounce's diagnostic means.

`classify` gives scope (recipient / sender / lane / transient), permanence, reason and
whether to suppress, from the one provider rule table (`mailctl/data/provider_rules.yaml`,
loaded by `mailctl.config.provider_rules`) and the general phrase tables in `phrases`;
`rules` matches a reply to the lane action of its rule. Pure functions: must not import
the store, cli, delivery, bounces, report or sim.
"""
