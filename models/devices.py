"""Which device a model runs on: `auto` picks CUDA when torch sees a GPU."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """`auto` → `cuda` when available else `cpu`; `cuda` without a GPU is an error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ValueError(
            f"device {device!r} asked for, but no CUDA GPU is visible; use --device cpu"
        )
    return device
