"""`python -m infra.cli`: the same as `recsys`."""

import sys

from infra.cli import main

sys.exit(main())
