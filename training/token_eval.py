"""The seed's story on the shapes oracle: DALL-E 1's token model, one sample and best of many
by CLIP, beside DALL-E 2's tools on the diffusion model (guidance, then guidance and ranking).

Every held-out prompt of training/evaluate.py gets SAMPLES candidates from the token model
(`shapes-ar`) with fixed seeds, drawn and ranked through the worker's own TokenGenerator and
ClipRanker; the oracle judges every image. From the same draws: one random sample (the share
of all images that match), best of the first 8, 16 and 64 by each ranker (the one served with
the model, and the plain shapes CLIP for comparison), and any of 64 (the ceiling). The
diffusion rows come from the guidance table of the same page (quality.json).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shapeworld.oracle import judge
from worker.autoregressive import TokenGenerator
from worker.families import to_pil
from worker.generation import GenerationRequest
from worker.ranking import ClipRanker, rank

SAMPLES = 64
BEST_OF = (8, 16, 64)
BASE_SEED = 70_000
SECTION_TITLE = "## The seed's story: token model and diffusion side by side"


@dataclass
class TokenCell:
    """One prompt kind's counts; `best[ranker][n]`: prompts whose pick of the first n matched."""

    prompts: int = 0
    images: int = 0
    matched: int = 0
    best: dict[str, dict[int, int]] = field(default_factory=dict)
    any_of_all: int = 0
    seconds: float = 0.0

    def rates(self) -> dict[str, float]:
        out = {
            "one_sample": self.matched / self.images,
            "any_of_64": self.any_of_all / self.prompts,
        }
        for name, counts in self.best.items():
            out |= {f"{name}_best_of_{n}": counts[n] / self.prompts for n in BEST_OF}
        return out


def run(
    generator: TokenGenerator, rankers: dict[str, ClipRanker], prompts: dict[str, list[str]]
) -> dict[str, TokenCell]:
    """`rankers` by name, the served one first: its time is the one reported."""
    cells: dict[str, TokenCell] = {}
    for kind, kind_prompts in prompts.items():
        cell = cells.setdefault(kind, TokenCell())
        for index, prompt in enumerate(kind_prompts):
            seeds = [BASE_SEED + 1000 * index + i for i in range(SAMPLES)]
            started = time.perf_counter()
            (images,) = generator.generate([GenerationRequest.of(prompt, seeds)])
            scores = {name: r.score(prompt, images) for name, r in list(rankers.items())[:1]}
            cell.seconds += time.perf_counter() - started
            scores |= {name: r.score(prompt, images) for name, r in list(rankers.items())[1:]}
            matches = [judge(prompt, to_pil(image)).match for image in images]
            cell.prompts += 1
            cell.images += len(images)
            cell.matched += sum(matches)
            for name, ranked in scores.items():
                counts = cell.best.setdefault(name, dict.fromkeys(BEST_OF, 0))
                for n in BEST_OF:
                    counts[n] += matches[rank(ranked[:n])[0]]
            cell.any_of_all += any(matches)
        print(f"token model, {kind}: {cell.rates()}", flush=True)
    return cells


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def section(cells: dict[str, TokenCell], diffusion: dict[str, Any], meta: dict[str, Any]) -> str:
    """The page's section: the side-by-side table, the targets, what it cost."""

    def diffusion_rows(kind: str) -> tuple[float, float, float]:
        scales = sorted(float(k.split("@")[1]) for k in diffusion if k.startswith(f"{kind}@"))
        best = max(scales, key=lambda s: diffusion[f"{kind}@{s:g}"]["unranked"])
        at = diffusion[f"{kind}@{best:g}"]
        return diffusion[f"{kind}@1"]["unranked"], at["unranked"], at["clip_best"]

    one, two = cells["one"].rates(), cells["two"].rates()
    d_one, d_two = diffusion_rows("one"), diffusion_rows("two")
    served, *others = list(cells["one"].best)

    def best(rates: dict[str, float], n: int, ranker: str = served) -> float:
        return rates[f"{ranker}_best_of_{n}"]

    rows = [("token model, one random sample", one["one_sample"], two["one_sample"])]
    rows += [
        (f"token model, best of {n} by `{served}`", best(one, n), best(two, n)) for n in BEST_OF
    ]
    rows += [
        (f"token model, best of {n} by `{o}`", best(one, n, o), best(two, n, o))
        for o in others
        for n in BEST_OF[1:]
    ]
    rows += [
        ("token model, any of 64 (the ceiling for a ranker)", one["any_of_64"], two["any_of_64"]),
        ("diffusion, no guidance (scale 1), one sample", d_one[0], d_two[0]),
        ("diffusion, guidance (best scale), one sample", d_one[1], d_two[1]),
        ("diffusion, guidance and CLIP best of 8", d_one[2], d_two[2]),
    ]
    lift = best(two, 64) - two["one_sample"]
    targets = [
        (
            "token model best of 64 at least 20 points above one random sample (pairs)",
            f"{pct(best(two, 64))} vs {pct(two['one_sample'])} = {100 * lift:+.1f} points",
            lift >= 0.20,
        ),
        (
            "token model singles best of 16 at least 90%",
            pct(best(one, 16)),
            best(one, 16) >= 0.90,
        ),
    ]
    lines = [
        SECTION_TITLE,
        "",
        "DALL-E 1 drew many samples from a transformer over image tokens and kept the best by "
        "CLIP; DALL-E 2 added classifier-free guidance to diffusion. Here both, on the same "
        f"held-out prompts ({cells['one'].prompts} one-object, {cells['two'].prompts} "
        f"two-object): the token model `shapes-ar` (a tiny Janus: VQ tokens and a decoder-only "
        f"transformer, guidance {meta['guidance']:g}) drew {SAMPLES} candidates per prompt "
        "with fixed seeds through the worker's TokenGenerator; best of n ranks the first n of "
        f"them. `{served}` is the CLIP served with the model (the shapes CLIP tuned to read "
        "the tokenizer's decodings as well as rendered scenes, training/autoregressive.py)"
        + "".join(f"; `{o}` the plain shapes CLIP, for comparison" for o in others)
        + ". Every image judged by the oracle.",
        "",
        "| | one object | two objects |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {pct(a)} | {pct(b)} |" for name, a, b in rows]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets]
    recon = meta.get("reconstructions")
    lines += [
        "",
        "Where the token model loses: any of 64 against the pick of 64 is the ranker's share "
        f"({pct(one['any_of_64'] - best(one, 64))} of one-object and "
        f"{pct(two['any_of_64'] - best(two, 64))} of two-object prompts had a right image "
        f"`{served}` did not choose), and the tokenizer's "
        + (
            f"(the oracle reads {pct(recon)} of its encode-decode round trips right, so even "
            "perfect tokens would miss the rest)."
            if recon is not None
            else "(its round trips are not measured here)."
        ),
    ]
    images = sum(c.images for c in cells.values())
    seconds = sum(c.seconds for c in cells.values())
    lines += [
        "",
        f"The token model drew and ranked {images} images in {seconds:.0f} s "
        f"({1000 * seconds / images:.1f} ms an image, {meta['images_per_call']} per call) on "
        f"{meta['machine']}.",
        "",
    ]
    return "\n".join(lines)
