"""`python -m pruneopd ...` (and `torchrun ... -m pruneopd train ...`) = the `pruneopd` command."""

from .cli import main

main()
