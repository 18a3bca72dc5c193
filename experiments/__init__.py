"""fedser experiments: demo corpus, demo run and simulations."""
