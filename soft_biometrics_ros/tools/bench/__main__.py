"""`python -m soft_biometrics_ros.tools.bench`: the soft_biometrics_bench command line."""

import sys

from soft_biometrics_ros.tools.bench.cli import main

sys.exit(main())
