"""The edge agent's one error tree.

AgentError
├── StateFolderBusy      another agent runs on this state folder (boot.py)
├── ConfigError          a configuration file or value the agent cannot use (config.py)
└── HardwareError        a part of the device did not do what was asked (hardware/errors.py)
    ├── AudioError
    └── Unreachable
"""


class AgentError(Exception):
    """Something the edge agent could not do, with the context a person needs in the message."""


class ConfigError(AgentError):
    """A configuration file or value the agent cannot use."""
