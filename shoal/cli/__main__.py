"""``python -m shoal.cli``: the same as ``swctl``.

``swctl up`` starts the controller-manager this way, so a cluster can be brought up even
when the ``swctl`` console script is not on PATH (a virtualenv that is not activated).
"""

from __future__ import annotations

import sys

from shoal.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
