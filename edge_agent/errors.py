"""The edge agent's one error tree.

    AgentError               anything the agent could not do, with the context a person needs
    ├── ConfigError          a configuration file or value the agent cannot use (config.py)
    ├── StateFolderBusy      another agent runs on this state folder (boot.py)
    ├── CommandFailed        a remote command ran and did not do what was asked (commands.py)
    ├── DownloadRefused      an update's download answered wrongly by the server (ota/download.py)
    ├── UpdateStepFailed     an update step that failed, with its failure code (ota/updater.py)
    ├── BuildError           not an agent build, or not the one its manifest names (ota/builds.py)
    ├── TimeSourceError      a time source that gave no usable time, and why (time_sources.py)
    └── HardwareError        a part of the device did not do what was asked (hardware/errors.py)
        ├── AudioError       the voice pack or an audio sink cannot do what was asked
        └── Unreachable      the part does not answer, or its port is gone

Errors from the parts the agent stands on are mapped where they enter: the MQTT link's
(`mqtt_link.errors`) by the parts that publish, a TLS setup error to `ConfigError`.
"""


class AgentError(Exception):
    """Something the edge agent could not do, with the context a person needs in the message."""


class ConfigError(AgentError):
    """A configuration file or value the agent cannot use."""


class CommandFailed(AgentError):
    """A command ran and did not do what was asked; the message is the result's reason."""
