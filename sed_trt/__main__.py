"""``python -m sed_trt``: the same as the ``sed-trt`` command."""

import sys

from sed_trt.cli import main

sys.exit(main())
