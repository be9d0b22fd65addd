"""The ``rollout-matrix`` command: one module per group of subcommands, each a thin layer over its
stage's Python API; :mod:`rollout_matrix.cli.main` parses and dispatches.

May import: every stage and the base modules; nothing imports the cli.
"""
