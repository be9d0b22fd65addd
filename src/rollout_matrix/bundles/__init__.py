"""The offline GPU machine's supply, made on the host: an entry's locked wheels as hash-checked parts
(manifest, payloads, chunks), and the next GPU batch to carry.

May import: evidence, locks, matrix and the base modules; not images (no Docker) or gpu.
"""
