"""Over-the-air updates on the device: A/B slots with a boot counter, a resumable download, and
the install state machine (see `updater`)."""
