"""Everything that stands in for the world: a payment backend and a fleet of devices.

The simulated devices run the real edge agent over simulated hardware; the simulated backend
sends correctly signed notifications over real HTTP.
"""
