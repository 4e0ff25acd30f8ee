"""The edge agent: the runtime on a payment speaker or POS terminal.

One asyncio process, as parts that each own one job, composed by `agent.EdgeAgent`: the uplink
(now or through the on-disk outbox), the downlink (routed, signature checked once), the
announcer (signed announce → Mandarin reading → voice clips or the TTS chip → ack), the health
reporter, the command runner and the OTA host. It speaks MQTT through `mqtt_link` and the
protocol of `firmware_protocols`, and nothing else of the project. Hardware sits behind small
ports in `hardware` with simulated adapters, so the same agent runs on a board, in tests and in
the simulated fleet. It stays light: no web framework, no database client.
"""
