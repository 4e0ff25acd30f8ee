"""`python -m edge_agent`: the agent program (`program`), as the launcher starts it from a slot."""

import sys

from edge_agent.program import main

sys.exit(main())
