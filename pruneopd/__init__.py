"""pruneopd: fast, reliability-aware on-policy distillation (Prune-OPD).

The package's folders are its layers (README, "What's inside"):

    method/    the method's tensor functions and the method classes (drift, budget, losses)
    engines/   who samples and who scores: the Sampler and Teacher interfaces, their engines
    csrc/      the compiled CPU kernels behind the fused engine
    training/  set-up and the training loop, phase by phase
    tools/     zoo, card, bench, report, inspect
    tasks/     built-in tasks and data files
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# modules that moved into the layers and whose old paths are part of the interface
_MOVED = {f"{__name__}.{old}": f"{__name__}.method.{old}" for old in ("drift", "budget", "losses")}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import pruneopd.drift` gives the module `pruneopd.method.drift` itself (one module
    object under both names), imported on first use."""

    def find_spec(self, name, path=None, target=None):
        if name in _MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Alias) for f in sys.meta_path):
    sys.meta_path.append(_Alias())
