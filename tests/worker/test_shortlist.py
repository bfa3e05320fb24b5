"""A job's shortlist, filled chunk by chunk, keeps what ranking every score at once keeps."""

from __future__ import annotations

import random

from worker.ranking import Shortlist, rank


def test_a_shortlist_filled_in_chunks_keeps_the_top_k_of_all_scores_ties_by_order() -> None:
    rng = random.Random(3)
    scores = [float(rng.randint(0, 20)) for _ in range(50)]  # many ties
    images = [f"image {i}" for i in range(50)]
    for chunk in (1, 4, 7, 50):
        shortlist = Shortlist(5)
        for start in range(0, 50, chunk):
            shortlist.add(start, images[start : start + chunk], scores[start : start + chunk])  # type: ignore[arg-type]
        best = rank(scores)[:5]
        assert shortlist.indices == best
        assert shortlist.images == [images[i] for i in best]
        assert shortlist.scores == [scores[i] for i in best]
