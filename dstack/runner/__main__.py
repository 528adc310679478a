"""`python -m dstack.runner --store URL --run NAME --workdir DIR [--cache DIR]`."""

import sys

from dstack.runner.job_runner import main

sys.exit(main())
