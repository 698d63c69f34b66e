"""``python -m skyplane_provider.coordinator JOB_DIR``: see :mod:`.process`."""

import sys

from .process import main

sys.exit(main())
