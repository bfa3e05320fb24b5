"""Pick the torch device and dtype from settings ("auto" = the best the machine has)."""

from __future__ import annotations

from typing import Any


def resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        # Half precision only where kernels exist for it; CPU float16 is slow and lossy.
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    return getattr(torch, name)
