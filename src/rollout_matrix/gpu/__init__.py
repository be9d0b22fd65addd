"""The GPU machine's side of a bundle (``python -m rollout_matrix.gpuenv``): receive parts into a
store, build a lock-exact venv from them, run tests/engine or a script in it, a pipeline of such
steps, and collect the results.

Runs with the machine's own Python, the standard library and ``packaging`` only: every module here,
and all it imports, must stay free of other third-party imports (tests/unit/test_import_direction.py
checks it). May import: bundles (manifest, payload, borrow), evidence (the run record), locks (the lock file
format), matrix and the base modules.
"""
