"""rollout-matrix: build, tag, push, pull and test one Docker image per supported engine release.

One subpackage per stage of the pipeline (docs/architecture.md draws it and states which may import
which; tests/unit/test_import_direction.py holds the code to it): matrix -> locks -> evidence, then
images and bundles beside each other, gpu on top of bundles, and cli over all of them. Nothing is
imported here, so importing one module never drags in another stage (the GPU machine's side runs
with the standard library and ``packaging`` alone).
"""
