"""Devices and the registry: the hierarchy imported from CSV (`importer`), what the pages read
about devices (`registry`, `queries`), the device state machine (`states`, pure) and the tracker
that applies its signals in the database (`tracker`), and the HTTP routes (`routes`)."""
