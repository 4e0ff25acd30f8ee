"""`python -m haodian.cli`, the same as `haodian`."""

import sys

from haodian.cli import main

sys.exit(main())
