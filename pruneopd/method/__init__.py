"""The method: pure tensor functions of Prune-OPD and its baselines (drift monitor, reliability weights, budget, losses, the hybrid gate) and the method classes built from the config."""
