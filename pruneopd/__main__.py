"""`python -m pruneopd ...` (and `torchrun ... -m pruneopd train ...`) = the `pruneopd` command."""

from pruneopd.cli import main

main()
