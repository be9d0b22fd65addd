"""What to prove: matrix.yaml read and checked into entries (one engine release each), entry names,
each entry's shim band, and where the checkout is.

May import: the base modules (errors, atomic, progress) and rollout_shims' band table; nothing of the
other stages, which all read the matrix.
"""
