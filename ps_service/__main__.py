"""``python -m ps_service``: see :mod:`ps_service.serve` for the options."""

import sys

from ps_service.serve import main

sys.exit(main())
