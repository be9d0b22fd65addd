"""``python -m rollout_matrix.gpuenv``: the GPU machine's command (docs/gpu.md), as documented.

The command is run from a copied checkout with ``PYTHONPATH=src`` and the machine's bare Python, so
its name stays here; the work is in :mod:`rollout_matrix.gpu` (:mod:`rollout_matrix.gpu.main` parses).
"""

import sys

from rollout_matrix.gpu.main import main

if __name__ == "__main__":
    sys.exit(main())
