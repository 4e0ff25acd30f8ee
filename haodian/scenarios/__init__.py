"""Whole-system scenarios run from the shell: the demo (`demo`) and the OTA campaign with injected
faults (`ota_campaign`). They start the servers and the simulators together, so they live above
both; `simulators` depends on nothing here."""
