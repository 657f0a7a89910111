"""The systems under test: what the experiment compares (Petals, FlexGen, transformers on one GPU).

Each system is one module here that declares a ``SYSTEM`` (``base.System``); ``registry`` lists them.
Nothing outside this package compares a row's or a flag's system with a name: the plan, the client,
FlexGen and the report read what the declaration says (label, kind, hosts, role, paper anchors).
"""
