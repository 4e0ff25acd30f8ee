"""Everything that stands in for the world: a payment backend and a fleet of devices.

The simulated devices run the real edge agent over simulated hardware; the simulated backend
sends correctly signed notifications over real HTTP. It depends on the parts it simulates the
world for, and on nothing above them: the scenarios that run it with the servers live in
`haodian.scenarios`.
"""
