"""What a test run proved: the run record every run writes (run.json, junit.xml), its judgement,
recording runs into cpu-results/ and gpu-results/, band statuses, and the compatibility report.

May import: locks (a run is bound to its committed lock), matrix and the base modules.
"""
