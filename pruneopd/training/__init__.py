"""The training loop: set-up, the step's phases, the update's objective, evaluation, checkpoints, run logs and torchrun."""
