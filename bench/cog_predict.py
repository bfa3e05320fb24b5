"""The embedded shapes pipeline as a Cog predictor, for benchmark 6 (bench/peers.py): what a
user who picked Cog instead of Daikon would write. One prediction is one job's work with one
candidate (bench/peer_job.py), returned as a PNG file.

    PATH=.venv/bin:$PATH COG_PREDICT_TYPE_STUB=bench/cog_predict.py:Predictor PORT=5000 \\
        .venv/bin/python -m cog.server.http --host 127.0.0.1

(cog 0.23's server, coglet, runs the predictor in a `python` found on PATH: the venv's.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path as FsPath

from cog import BaseRunner, Input, Path

sys.path.insert(0, str(FsPath(__file__).resolve().parent))

from peer_job import ShapesJob  # bench/ is not a package: found through the path above


class Predictor(BaseRunner):
    def setup(self) -> None:
        self.job = ShapesJob()
        self.out = FsPath(tempfile.mkdtemp(prefix="daikon-cog-"))

    def run(
        self,
        prompt: str = Input(description="what to draw"),
        seed: int = Input(default=0),
        size: int = Input(default=64),
        steps: int = Input(default=20),
    ) -> Path:
        path = self.out / f"{seed}.png"
        path.write_bytes(self.job.png(prompt, seed, size, steps))
        return Path(path)
