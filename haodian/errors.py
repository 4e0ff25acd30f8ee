"""The application shell's one error tree (the parts' own errors are theirs: AgentError,
FleetError, BridgeError, ...).

    HaodianError            something the shell could not set up
     ├── KeyFileError       a key file missing, unreadable or of the wrong kind (keys.py)
     └── WorkersError       worker processes that cannot be planned or kept running (workers.py)
"""


class HaodianError(Exception):
    """Base of every error raised by `haodian` itself."""
