"""The one error tree of the hardware ports (drawn in the package docstring)."""


class HardwareError(Exception):
    """A part of the device did not do what was asked."""


class AudioError(HardwareError):
    """The voice pack or an audio sink cannot do what was asked."""


class Unreachable(HardwareError):
    """The part does not answer, or its port is gone. It may come back; callers retry later."""
