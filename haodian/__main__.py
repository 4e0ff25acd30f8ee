"""`python -m haodian`: the same as the `haodian` command."""

import sys

from haodian.cli import main

sys.exit(main())
