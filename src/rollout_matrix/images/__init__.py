"""One Docker image per entry: site options, the build plan (content tag, context), build, check,
push and pull, the devel test bases of this project's CPU machines, and a test run inside an image.

May import: evidence (a run writes its record), locks, matrix and the base modules; not bundles or gpu.
"""
