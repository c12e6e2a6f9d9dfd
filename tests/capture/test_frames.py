"""One answer to "whose code is this file": hfault's, a library's or the user's."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from hfault.capture import frames
from hfault.capture.hooks import Hooks, Listener
from hfault.capture.runner import raised_in_hfault
from hfault.capture.schedule import Schedule
from hfault.capture.session import CaptureSession

INSTALLED = ["site-packages", "dist-packages"]


def _library(tmp_path: Path, folder: str, name: str, source: str) -> ModuleType:
    """A module written under ``tmp_path/lib/python3/<folder>/``: an installed package."""
    path = tmp_path / "lib" / "python3" / folder / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_what_counts_as_what() -> None:
    assert frames.is_hfault(frames.__file__) and not frames.is_user(frames.__file__)
    for library in (torch.__file__, os.__file__, "<frozen runpy>", "<string>",
                    "/usr/lib/python3/dist-packages/numpy/core.py",
                    "/opt/venv/lib/python3.11/site-packages/transformers/trainer.py"):
        assert frames.is_library(library) and not frames.is_user(library), library
    assert frames.is_user(__file__) and not frames.is_library(__file__)
    assert not frames.is_hfault(frames.HFAULT_DIR + "_extras/module.py")  # a sibling folder


@pytest.mark.parametrize("folder", INSTALLED)
def test_an_optimizer_built_inside_a_library_points_at_the_users_call(
        tmp_path: Path, folder: str) -> None:
    lib = _library(tmp_path, folder, f"trainer_{folder.replace('-', '_')}", (
        "import torch\n"
        "def build(params):\n"
        "    return torch.optim.SGD(params, lr=0.1)\n"))
    session = CaptureSession(Schedule(auto=False))
    with session:
        line = sys._getframe().f_lineno + 1
        lib.build([torch.nn.Parameter(torch.zeros(2))])
    assert session.state.optimizer_sources == [{"file": __file__, "line": line}]


@pytest.mark.parametrize("folder", INSTALLED)
def test_an_error_raised_in_a_library_under_hfaults_own_code_is_hfaults(
        tmp_path: Path, folder: str) -> None:
    lib = _library(tmp_path, folder, f"listener_{folder.replace('-', '_')}", (
        "from hfault.capture.hooks import Listener\n"
        "class Broken(Listener):\n"
        "    def open(self):\n"
        "        raise KeyError('inside an installed package')\n"))
    with pytest.raises(KeyError) as info, Hooks([lib.Broken()]):
        pass
    assert raised_in_hfault(info.value.__traceback__)


def test_an_error_passing_through_a_delegating_hook_is_the_scripts() -> None:
    class Fine(Listener):
        pass

    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError) as info, Hooks([Fine()]):
        torch.optim.SGD([param], lr=-1.0)  # torch refuses it, inside hfault's init wrapper
    assert not raised_in_hfault(info.value.__traceback__)
