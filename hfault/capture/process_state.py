"""What a run of a user's script can change in this process, saved and restored so that the next
in-process run (perturbation draws, the --verify-fix rerun) starts from the same state: RNG
streams, default dtype, grad mode, and the modules the script imported from its own folder."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from hfault.capture import frames


class ProcessState:
    """What a script run can change in this process and the next run must not see."""

    def __init__(self) -> None:
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        )
        self.py_rng = random.getstate()
        self.np_rng = np.random.get_state()
        self.dtype = torch.get_default_dtype()
        self.grad = torch.is_grad_enabled()
        self.modules = set(sys.modules)

    def restore(self) -> None:
        torch.set_rng_state(self.torch_rng)
        if torch.cuda.is_initialized():
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state_all(self.cuda_rng)
            else:  # CUDA started during the first run: back to its fresh state
                torch.cuda.manual_seed_all(torch.cuda.initial_seed())
        random.setstate(self.py_rng)
        np.random.set_state(self.np_rng)
        torch.set_default_dtype(self.dtype)
        torch.set_grad_enabled(self.grad)

    def forget_user_modules(self, folder: Path) -> None:
        """Drop the modules the script imported from its own folder (re-imported fresh next
        run, so module-level state starts over); everything else (installed packages, torch
        lazily importing its submodules, hfault) stays loaded."""
        root = str(folder.resolve()) + os.sep
        for name in list(sys.modules):
            if name in self.modules:
                continue
            path = getattr(sys.modules[name], "__file__", None)
            if path is None:
                continue
            path = os.path.abspath(path)
            if path.startswith(root) and frames.is_user(path):
                del sys.modules[name]
