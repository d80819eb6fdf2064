"""Product data beyond stock (issue 10): field groups, each synced live, on a schedule or by hand.

One module per kind of group implements :class:`syncd.fields.group.FieldGroup`; the modes
(realtime through the apply pipeline, the scheduled pass, manual ``syncd sync --fields``) only
call that interface. See ``syncd/fields/group.py`` for the contract.
"""
