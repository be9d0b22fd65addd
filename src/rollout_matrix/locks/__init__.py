"""What PyPI offers and what the project pins: the index's simple API, uv resolutions, the lock files
under docker/locks/, their drift, and new releases found on the index and added to matrix.yaml.

May import: matrix and the base modules (and rollout_shims' band table, to name a new release's band).
"""
