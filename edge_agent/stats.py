"""The agent's counters since boot, shared by its parts: what the health report's error counts
carry and what the simulators and tests read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class AgentStats:
    received: int = 0  # announces that reached the announcer (valid messages)
    played: int = 0
    duplicates: int = 0
    expired: int = 0
    refused: int = 0  # signed messages that failed their check, and commands refused
    silenced: int = 0
    bad_messages: int = 0  # malformed messages on a known downlink topic
    play_failures: int = 0
    receipts_printed: int = 0
    receipt_failures: int = 0
    commands: int = 0
