"""One job's work without any service around it: the embedded shapes pipeline draws one image,
CLIP ranks it, and it is encoded as a PNG. Cog's predictor (bench/cog_predict.py), the plain
Celery task and the direct baseline of bench/peers.py all run exactly this."""

from __future__ import annotations

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class ShapesJob:
    """The pipeline and CLIP, loaded once (as Daikon's worker keeps them warm)."""

    def __init__(self) -> None:
        import os

        import torch

        if os.environ.get("PEER_TORCH_THREADS"):  # bench/peers.py sets every peer's alike
            torch.set_num_threads(int(os.environ["PEER_TORCH_THREADS"]))

        from server.settings import EMBEDDED_CLIP, EMBEDDED_PIPELINE
        from worker.generation import Generator
        from worker.ranking import ClipRanker

        self.generator = Generator.load(EMBEDDED_PIPELINE, device="cpu", dtype=torch.float32)
        self.ranker = ClipRanker.load(EMBEDDED_CLIP, device="cpu", dtype=torch.float32)

    def png(self, prompt: str, seed: int, size: int, steps: int) -> bytes:
        from worker.generation import GenerationRequest
        from worker.ranking import rank

        request = GenerationRequest.of(
            prompt, (seed,), width=size, height=size, steps=steps, guidance_scale=7.5
        )
        images = self.generator.generate([request])[0]
        best = images[rank(self.ranker.score(prompt, images))[0]]
        out = io.BytesIO()
        best.save(out, format="PNG")
        return out.getvalue()
