"""The edge agent: the runtime on a payment speaker or POS terminal.

One asyncio process owns the MQTT link, the announcer (signed announce → Mandarin reading →
voice clips), and health reporting. Hardware sits behind small ports in `hardware` and `audio`
with simulated adapters, so the same agent runs on a board, in tests and in the simulated
fleet. It stays light: no web framework, no database client.
"""
