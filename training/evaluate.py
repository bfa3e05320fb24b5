"""`make eval-quality`: measure classifier-free guidance and CLIP ranking with the oracle.

On the fixed held-out prompts (shapeworld.prompts), every prompt gets CANDIDATES images with
fixed seeds at each guidance scale, generated and ranked through the worker's own loader,
Generator and ClipRanker. The oracle judges every image. Per scale and prompt kind it reports:

- unranked: the share of all images that match, i.e. what a random pick of the 8 gets;
- CLIP best-of-8: the share of prompts whose top-CLIP-score image matches;
- any-of-8: the share of prompts with at least one matching image (the ceiling for ranking).

Then the edits (training/edit_eval.py): inpainting one object of a scene and image-to-image
at strength 0.5, judged by the same oracle, as a section of the same page.

Writes docs/quality.md (tables, targets, timings), docs/quality-grid.png and
docs/quality-edits.png. `--edits only` re-measures the edits alone and replaces their section,
keeping the rest of the page.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from server.settings import (
    EMBEDDED_CLIP,
    EMBEDDED_PIPELINE,
    EMBEDDED_TOKEN_CLIP,
    EMBEDDED_TOKEN_LIMITS,
    EMBEDDED_TOKEN_PIPELINE,
)
from shapeworld.oracle import judge
from shapeworld.prompts import ALL_TWO_OBJECT_TYPES, HELD_OUT_COUNT, eval_prompts
from shapeworld.world import render, sample_scene
from training import edit_eval, token_eval
from training.common import RECORD
from worker.autoregressive import TokenGenerator
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker, rank

SCALES = (1.0, 2.0, 3.0, 5.0, 7.5, 9.0)
CANDIDATES = 8
STEPS = 20
BASE_SEED = 10_000
PROMPTS_PER_CALL = 8
GRID_PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a red circle above a blue square",
    "a green triangle left of a purple circle",
    "a orange square below a yellow circle",
)
ZOOM = 3
ORACLE_CHECK_IMAGES = 3000
ORACLE_CHECK_SEED = 31337  # scenes training never drew
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cell:
    """Counts for one (kind, scale)."""

    prompts: int = 0
    images: int = 0
    matched_images: int = 0
    best_matched: int = 0
    any_matched: int = 0
    gen_seconds: float = 0.0
    rank_seconds: float = 0.0

    def rates(self) -> dict[str, float]:
        return {
            "unranked": self.matched_images / self.images,
            "clip_best": self.best_matched / self.prompts,
            "any": self.any_matched / self.prompts,
        }


@dataclass
class Results:
    scales: tuple[float, ...] = SCALES
    cells: dict[tuple[str, float], Cell] = field(default_factory=dict)
    grid: dict[tuple[str, float], Image.Image] = field(default_factory=dict)


def seeds_for(index: int) -> tuple[int, ...]:
    return tuple(BASE_SEED + 100 * index + i for i in range(CANDIDATES))


def run(
    generator: Generator,
    ranker: ClipRanker,
    results: Results,
    kind: str,
    prompts: list[str],
    scale: float,
    first_index: int,
) -> None:
    cell = results.cells.setdefault((kind, scale), Cell())
    for start in range(0, len(prompts), PROMPTS_PER_CALL):
        chunk = prompts[start : start + PROMPTS_PER_CALL]
        requests = [
            GenerationRequest.of(
                p,
                seeds_for(first_index + start + i),
                width=32,
                height=32,
                steps=STEPS,
                guidance_scale=scale,
            )
            for i, p in enumerate(chunk)
        ]
        started = time.perf_counter()
        batches = generator.generate(requests)
        cell.gen_seconds += time.perf_counter() - started
        for prompt, images in zip(chunk, batches, strict=True):
            started = time.perf_counter()
            best = rank(ranker.score(prompt, images))[0]
            cell.rank_seconds += time.perf_counter() - started
            matches = [judge(prompt, image).match for image in images]
            cell.prompts += 1
            cell.images += len(images)
            cell.matched_images += sum(matches)
            cell.best_matched += matches[best]
            cell.any_matched += any(matches)
            if prompt in GRID_PROMPTS:
                results.grid[(prompt, scale)] = images[0]
                results.grid[(prompt, -scale)] = images[best]


def draw_grid(results: Results, path: Path) -> None:
    cell = 32 * ZOOM
    label_w, head_h, pad = 250, 34, 4
    pick = 7.5 if 7.5 in results.scales else max(results.scales)
    columns = [*results.scales, -pick]
    width = label_w + len(columns) * (cell + pad)
    height = head_h + len(GRID_PROMPTS) * (cell + pad)
    grid = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(grid)
    for j, scale in enumerate(columns):
        title = f"scale {scale:g}" if scale > 0 else f"{-scale:g}, CLIP best"
        draw.text((label_w + j * (cell + pad) + 4, 10), title, fill=(0, 0, 0))
    for i, prompt in enumerate(GRID_PROMPTS):
        y = head_h + i * (cell + pad)
        draw.text((6, y + cell // 2 - 6), prompt, fill=(0, 0, 0))
        for j, scale in enumerate(columns):
            image = results.grid.get((prompt, scale))
            if image is not None:
                big = image.resize((cell, cell), Image.Resampling.NEAREST)
                grid.paste(big, (label_w + j * (cell + pad), y))
    grid.save(path, optimize=True)


def oracle_agreement() -> float:
    """Share of freshly generated scenes the oracle reads back exactly as their caption says."""
    rng = random.Random(ORACLE_CHECK_SEED)
    agreed = 0
    for _ in range(ORACLE_CHECK_IMAGES):
        scene = sample_scene(rng)
        agreed += judge(scene.caption(), render(scene)).match
    return agreed / ORACLE_CHECK_IMAGES


def shown(path: str) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def training_record(pipeline: str) -> dict[str, Any] | None:
    """What `make train-models` wrote beside the weights, when they came from it."""
    path = Path(pipeline) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None  # type: ignore[no-any-return]


def trained(record: dict[str, Any]) -> str:
    steps = ", ".join(f"{stage} {n}" for stage, n in record["steps"].items())
    minutes = sum(record["seconds"].values()) / 60
    return (
        f"Trained by `make train-models` (seed {record['seed']}; steps: {steps}) in "
        f"{minutes:.0f} min on {record['device']} with {record['threads']} threads."
    )


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(results: Results, one: list[str], two: list[str], meta: dict[str, Any]) -> str:
    def rates(kind: str, scale: float) -> dict[str, float]:
        if kind == "all":
            a, b = results.cells[("one", scale)], results.cells[("two", scale)]
            merged = Cell(
                a.prompts + b.prompts,
                a.images + b.images,
                a.matched_images + b.matched_images,
                a.best_matched + b.best_matched,
                a.any_matched + b.any_matched,
            )
            return merged.rates()
        return results.cells[(kind, scale)].rates()

    lines = [
        "# Quality of the embedded shapes models",
        "",
        "Generated by `make eval-quality` (training/evaluate.py); do not edit by hand.",
        "",
        f"- Prompts: {len(one)} one-object (each of the world's 18 captions twice) and "
        f"{len(two)} two-object prompts, one per scene type held out of training "
        f"({HELD_OUT_COUNT} of {meta['two_object_types']}: the models never saw these "
        "combinations of colours, shapes and relation).",
        f"- {CANDIDATES} candidates per prompt with fixed seeds, {STEPS} DDIM steps, 32x32, "
        "through the worker's Generator and ClipRanker; every image judged by the oracle "
        "(shapeworld/oracle.py: right colours on the right shapes, nothing else, the relation).",
        f"- The oracle agrees with the generator's labels on {pct(meta['oracle_agreement'])} "
        f"of {ORACLE_CHECK_IMAGES} held-out generated images.",
        "- *unranked* = share of all images that match = what a random pick of the 8 gets on "
        "average; *CLIP best-of-8* = share of prompts whose highest-CLIP-score image matches; "
        "*any-of-8* = share of prompts with at least one match (the ceiling for any ranker).",
        "",
        "## Caption match by guidance scale",
        "",
        "| scale | one: unranked | one: CLIP best-of-8 | one: any-of-8 "
        "| two: unranked | two: CLIP best-of-8 | two: any-of-8 | all: unranked | all: CLIP best |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scale in results.scales:
        o, t, a = rates("one", scale), rates("two", scale), rates("all", scale)
        lines.append(
            f"| {scale:g} | {pct(o['unranked'])} | {pct(o['clip_best'])} | {pct(o['any'])} "
            f"| {pct(t['unranked'])} | {pct(t['clip_best'])} | {pct(t['any'])} "
            f"| {pct(a['unranked'])} | {pct(a['clip_best'])} |"
        )

    def best_scale(kind: str) -> float:
        return max(results.scales, key=lambda s: rates(kind, s)["unranked"])

    def doubling(kind: str, label: str) -> tuple[str, str, bool]:
        scale, base = best_scale(kind), rates(kind, 1.0)["unranked"]
        best = rates(kind, scale)["unranked"]
        lift = best / base if base else float("inf")
        # Misses say what a ratio of match rates cannot once scale 1 matches most of the time.
        value = (
            f"scale {scale:g}: {pct(best)} vs {pct(base)} = {lift:.2f}x; "
            f"misses {pct(1 - base)} -> {pct(1 - best)}"
        )
        if base > 0.5:
            value += " (doubling is out of reach: scale 1 already matches over half)"
        return (
            f"guidance at its best scale at least doubles scale 1 ({label}, unranked)",
            value,
            lift >= 2.0,
        )

    scale_all = best_scale("all")
    at_best = rates("all", scale_all)
    ranking_gain = at_best["clip_best"] - at_best["unranked"]
    one_best = max(rates("one", s)["clip_best"] for s in results.scales)
    two_best = max(rates("two", s)["clip_best"] for s in results.scales)
    targets = [
        doubling("all", "all prompts"),
        doubling("two", "two-object prompts"),
        doubling("one", "one-object prompts"),
        (
            f"CLIP best-of-8 beats a random pick by at least 10 points (all prompts, scale "
            f"{scale_all:g})",
            f"{pct(at_best['clip_best'])} vs {pct(at_best['unranked'])} = "
            f"{100 * ranking_gain:+.1f} points",
            ranking_gain >= 0.10,
        ),
        (
            "one-object prompts at least 90% with guidance plus ranking (best scale)",
            pct(one_best),
            one_best >= 0.90,
        ),
        (
            "two-object prompts at least 50% with guidance plus ranking (best scale)",
            pct(two_best),
            two_best >= 0.50,
        ),
    ]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets]
    lines += [
        "",
        "## Time per image",
        "",
        f"On {meta['machine']} ({meta['threads']} torch threads), batches of "
        f"{PROMPTS_PER_CALL * CANDIDATES} images:",
        "",
        "| scale | generation | CLIP scoring |",
        "|---:|---:|---:|",
    ]
    for scale in results.scales:
        cells = [results.cells[(k, scale)] for k in ("one", "two")]
        images = sum(c.images for c in cells)
        gen = sum(c.gen_seconds for c in cells) / images
        scoring = sum(c.rank_seconds for c in cells) / images
        lines.append(f"| {scale:g} | {1000 * gen:.1f} ms | {1000 * scoring:.1f} ms |")
    lines += [
        "",
        "Scale 1 runs the UNet once per step; above 1 classifier-free guidance runs it on the "
        "conditional and the unconditional input, about twice the work.",
        "",
        "## Grid",
        "",
        "Rows: prompts (the two-object ones here may be seen in training; the table's are not). "
        "Columns: guidance scale, first seed of 8; the last column is the CLIP pick of 8 at "
        "scale 7.5.",
        "",
        "![prompts x guidance scales](quality-grid.png)",
        "",
        f"Evaluated in {meta['seconds']:.0f} s; models: {meta['models']}.",
        "",
    ]
    if meta.get("training"):
        lines[-1:] = [trained(meta["training"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=EMBEDDED_PIPELINE)
    parser.add_argument("--clip", default=EMBEDDED_CLIP)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    parser.add_argument("--limit", type=int, default=0, help="prompts per kind (0 = all)")
    parser.add_argument(
        "--edits",
        choices=("all", "only", "none"),
        default="all",
        help="measure the edits too (all), alone (only) or not (none)",
    )
    parser.add_argument(
        "--edit-limit", type=int, default=0, help="edits per scene kind (0 = the full held-out set)"
    )
    parser.add_argument("--token-model", default=EMBEDDED_TOKEN_PIPELINE)
    parser.add_argument("--token-clip", default=EMBEDDED_TOKEN_CLIP, help="its served ranker")
    parser.add_argument(
        "--tokens",
        choices=("all", "only", "none"),
        default="all",
        help="measure the token model beside diffusion too (all), alone (only) or not (none)",
    )
    args = parser.parse_args()
    if args.tokens == "only":
        write_tokens(args, ClipRanker.load(args.clip, device="cpu", dtype=torch.float32))
        return
    if args.edits == "only":
        write_edits(
            args,
            Generator.load(args.pipeline, device="cpu", dtype=torch.float32),
            ClipRanker.load(args.clip, device="cpu", dtype=torch.float32),
        )
        return
    scales = tuple(float(s) for s in args.scales.split(","))
    started = time.perf_counter()
    generator = Generator.load(args.pipeline, device="cpu", dtype=torch.float32)
    ranker = ClipRanker.load(args.clip, device="cpu", dtype=torch.float32)
    one, two = eval_prompts()
    if args.limit:
        one, two = one[: args.limit], two[: args.limit]
    if 1.0 not in scales:
        parser.error("--scales must include 1 (no guidance), the baseline")
    results = Results(scales=scales)
    grid_extra = [p for p in GRID_PROMPTS if p not in one and p not in two]
    for scale in scales:
        run(generator, ranker, results, "one", one, scale, 0)
        run(generator, ranker, results, "two", two, scale, len(one))
        extra = Results()
        run(generator, ranker, extra, "grid", grid_extra, scale, 500)
        results.grid.update(extra.grid)
        cells = results.cells
        print(
            f"scale {scale:g}: one {cells[('one', scale)].rates()} "
            f"two {cells[('two', scale)].rates()}",
            flush=True,
        )
    meta = {
        "machine": f"{platform.processor() or platform.machine()} CPU",
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
        "models": f"`{shown(args.pipeline)}`, `{shown(args.clip)}`",
        "oracle_agreement": oracle_agreement(),
        "two_object_types": len(ALL_TWO_OBJECT_TYPES),
        "training": training_record(args.pipeline),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    draw_grid(results, args.out / "quality-grid.png")
    (args.out / "quality.md").write_text(report(results, one, two, meta))
    summary = {f"{k}@{s:g}": c.rates() for (k, s), c in results.cells.items()}
    (args.out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'quality.md'} in {meta['seconds']:.0f} s", flush=True)
    if args.tokens == "all":
        write_tokens(args, ranker)
    if args.edits == "all":
        write_edits(args, generator, ranker)


def write_tokens(args: argparse.Namespace, ranker: ClipRanker) -> None:
    """Measure the token model and put its section into quality.md before the edits' (replacing
    an earlier one), its figures into quality.json. The diffusion rows are that file's. Its
    candidates are ranked by its own served CLIP and, for comparison, by `ranker`."""
    figures_path = args.out / "quality.json"
    figures = json.loads(figures_path.read_text())
    per_call = EMBEDDED_TOKEN_LIMITS.images_per_call or token_eval.SAMPLES
    generator = TokenGenerator.load(
        args.token_model, model="shapes-ar", device="cpu", images_per_call=per_call
    )
    one, two = eval_prompts()
    if args.limit:
        one, two = one[: args.limit], two[: args.limit]
    rankers = {
        Path(args.token_clip).name: ClipRanker.load(
            args.token_clip, device="cpu", dtype=torch.float32
        ),
        Path(args.clip).name: ranker,
    }
    cells = token_eval.run(generator, rankers, {"one": one, "two": two})
    record = training_record(args.token_model) or {}
    meta = {
        "reconstructions": record.get("figures", {}).get("reconstructions_read_right"),
        "guidance": generator.capabilities.defaults.guidance_scale,
        "images_per_call": per_call,
        "machine": f"{platform.processor() or platform.machine()} CPU, "
        f"{torch.get_num_threads()} torch threads",
    }
    body = token_eval.section(cells, figures, meta)
    page = args.out / "quality.md"
    text = page.read_text()
    if token_eval.SECTION_TITLE in text:  # drop the earlier one: up to the next section
        head, _, rest = text.partition(token_eval.SECTION_TITLE)
        after = rest.find("\n## ")
        text = head + (rest[after + 1 :] if after >= 0 else "")
    if edit_eval.SECTION_TITLE in text:
        head, _, rest = text.partition(edit_eval.SECTION_TITLE)
        text = head + body + "\n" + edit_eval.SECTION_TITLE + rest
    else:
        text = text.rstrip("\n") + "\n\n" + body
    page.write_text(text)
    figures["tokens"] = {kind: cell.rates() for kind, cell in cells.items()}
    figures_path.write_text(json.dumps(figures, indent=2) + "\n")


def write_edits(args: argparse.Namespace, generator: Generator, ranker: ClipRanker) -> None:
    """Measure the edits and put their section at the end of quality.md (replacing an earlier
    one), their figures into quality.json and their grid beside them."""
    started = time.perf_counter()
    limit = args.edit_limit
    edits = edit_eval.edit_set(two=limit or edit_eval.EDITS_TWO, one=limit or edit_eval.EDITS_ONE)
    report = edit_eval.run_edits(generator, ranker, edits)
    args.out.mkdir(parents=True, exist_ok=True)
    edit_eval.draw_grid(report, args.out / "quality-edits.png")
    page = args.out / "quality.md"
    text = page.read_text() if page.is_file() else ""
    kept = text.split(edit_eval.SECTION_TITLE)[0].rstrip("\n")
    page.write_text((kept + "\n\n" if kept else "") + edit_eval.section(report))
    figures_path = args.out / "quality.json"
    figures = json.loads(figures_path.read_text()) if figures_path.is_file() else {}
    figures["edits"] = report.figures()
    figures_path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"edits: {report.figures()} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
