"""The tools around the trainer: the zoo and its card, the side-by-side bench and its report, the inspect page."""
