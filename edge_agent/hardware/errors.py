"""Errors of the hardware ports: a branch of the agent's error tree (edge_agent/errors.py)."""

from edge_agent.errors import AgentError


class HardwareError(AgentError):
    """A part of the device did not do what was asked."""


class AudioError(HardwareError):
    """The voice pack or an audio sink cannot do what was asked."""


class Unreachable(HardwareError):
    """The part does not answer, or its port is gone. It may come back; callers retry later."""
