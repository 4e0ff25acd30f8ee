"""The simulators' one error tree.

SimulatorError          something a simulator of the world could not do
 └── MosquittoError     a private Mosquitto that would not start or stop (mosquitto.py)
"""


class SimulatorError(Exception):
    """Base of every error raised by `simulators`."""
