"""Generated fedser protocol code (see protos/fedser/v1/*.proto; regenerate with `make protos`)."""
