"""`python -m certbot_smtp_dist`: the same entry point as the console script."""

import sys

from certbot_smtp_dist._internal.cli import main

sys.exit(main())
