"""Logging set-up for every `haodian` program: `configure` (in `edge_agent.logbook`, so that the
agent run from an update's slot has it too)."""

from edge_agent.logbook import configure

__all__ = ["configure"]
