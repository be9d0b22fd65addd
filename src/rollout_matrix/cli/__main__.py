"""``python -m rollout_matrix.cli``: the ``rollout-matrix`` command without its console script."""

import sys

from rollout_matrix.cli.main import main

sys.exit(main())
