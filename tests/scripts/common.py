"""Shared by the test training scripts: argument parsing and saving what the test compares."""

import argparse

import torch


def parse(extra: dict | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    for name, kwargs in (extra or {}).items():
        parser.add_argument(name, **kwargs)
    return parser.parse_args()


def save(path: str | None, losses: list[float], *modules: torch.nn.Module, **extra) -> None:
    if path:
        states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
        torch.save({"losses": losses, "states": states, **extra}, path)
