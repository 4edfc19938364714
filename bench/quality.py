"""End-to-end quality of the built-in shapes model: prompt adherence per scheduler and step count.

Generates images for a grid of shapes-world prompts (every shape x colour x background, or a
seeded sample) and reads each back with bench/shapes.py's evaluator; an image is adherent when
its shape, colour and background all match the prompt. A sampler, scheduler or kernel bug shows
up here as images that no longer match their prompts.

    python -m bench.quality [--model shapes|FOLDER] [--runs ddim:50,dpm++2m:20,euler:20,unipc:10]
                            [--prompts 126] [--images 2] [--guidance 7.5] [--json PATH]

Scheduler names are the `fastdiff generate --scheduler` short names (or class names). Each
image has its own generator seeded from (seed, prompt, image), so results do not depend on the
batch size. Standalone: it does not use the `python -m bench` harness.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import time

import torch

from bench.shapes import COLORS, SHAPES, caption, score

DEFAULT_RUNS = "ddim:50,dpm++2m:20,euler:20,unipc:10"
ALL_PROMPTS = [caption(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if b != c]


def prompt_grid(n: int | None = None, seed: int = 0) -> list[str]:
    """Every prompt of the shapes world (126), or a seeded sample of `n` of them."""
    if n is None or n >= len(ALL_PROMPTS):
        return list(ALL_PROMPTS)
    return random.Random(seed).sample(ALL_PROMPTS, n)


def load_pipeline(model: str = "shapes"):
    import fastdiff
    from fastdiff.__main__ import resolve_model

    return fastdiff.StableDiffusionPipeline.from_pretrained(resolve_model(model))


def generate(pipe, prompts, steps, images=1, seed=0, guidance=7.5, batch=64):
    """`images` PIL images per prompt, in prompt order, each from its own seeded generator."""
    jobs = [(p, i) for p in range(len(prompts)) for i in range(images)]
    out = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + p * 1000 + i) for p, i in chunk]
        out += pipe([prompts[p] for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                    generator=generators).images
    return out


def adherence(pipe, prompts, scheduler: str, steps: int, images=1, seed=0, guidance=7.5) -> dict:
    """Share of adherent images (and of right shapes, colours, backgrounds) for one scheduler setting."""
    from fastdiff.__main__ import scheduler_for

    pipe.scheduler = scheduler_for(scheduler, pipe.scheduler.config)
    start = time.perf_counter()
    pictures = generate(pipe, prompts, steps, images, seed, guidance)
    seconds = time.perf_counter() - start
    texts = [p for p in prompts for _ in range(images)]
    scores = [score(image, text) for image, text in zip(pictures, texts)]
    result = {"scheduler": scheduler, "class": type(pipe.scheduler).__name__, "steps": steps,
              "images": len(scores), "seconds": round(seconds, 2)}
    for key in ("ok", "shape_ok", "color_ok", "background_ok"):
        result[key] = sum(s[key] for s in scores) / len(scores)
    result["failures"] = sorted({t for t, s in zip(texts, scores) if not s["ok"]})
    return result


def table(results) -> str:
    lines = ["| scheduler | steps | adherent | shape | colour | background | images | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['scheduler']} ({r['class']}) | {r['steps']} | {r['ok']:.1%} | {r['shape_ok']:.1%} | "
                     f"{r['color_ok']:.1%} | {r['background_ok']:.1%} | {r['images']} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def parse_runs(text: str) -> list[tuple[str, int]]:
    runs = []
    for item in text.split(","):
        name, _, steps = item.rpartition(":")
        if not name or not steps.isdigit():
            raise argparse.ArgumentTypeError(f"a run is SCHEDULER:STEPS, got {item!r}")
        runs.append((name, int(steps)))
    return runs


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="built-in name or pipeline folder")
    parser.add_argument("--runs", type=parse_runs, default=parse_runs(DEFAULT_RUNS), help="SCHEDULER:STEPS,...")
    parser.add_argument("--prompts", type=int, default=None, help="sample this many prompts (default: all 126)")
    parser.add_argument("--images", type=int, default=2, help="images per prompt")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    # tiny batched ops: on a shared 2-core machine two threads ran >10x slower than one
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min", type=float, default=None, help="exit 1 if any run's adherence is below this")
    parser.add_argument("--json", default="bench/results/quality.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = prompt_grid(args.prompts, args.seed)
    results = []
    for name, steps in args.runs:
        results.append(adherence(pipe, prompts, name, steps, args.images, args.seed, args.guidance))
        print(f"{name}:{steps} adherent {results[-1]['ok']:.1%} ({results[-1]['seconds']:.0f} s)", flush=True)
    print(table(results))
    machine = f"{_cpu_name()}, {os.cpu_count()} cores"
    report = {"date": datetime.date.today().isoformat(), "machine": machine,
              "torch_threads": torch.get_num_threads(), "model": args.model, "prompts": len(prompts),
              "images_per_prompt": args.images, "guidance": args.guidance, "seed": args.seed, "results": results}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.min is not None and any(r["ok"] < args.min for r in results):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
