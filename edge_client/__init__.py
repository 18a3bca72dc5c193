"""fedser edge client: trains the shared model on a device's own speech files; audio never leaves."""
