"""The `fastdiff` command line: generate images with a built-in model or any Diffusers folder / hub id.

    fastdiff generate "a red circle on a blue background" --steps 20 --out images
    fastdiff models
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

# name -> folder inside the installed package
BUILTIN_MODELS = {
    "shapes": "assets/shapes",
}
BUILTIN_DESCRIPTIONS = {
    "shapes": "a small text-to-image model fastdiff trained itself: simple coloured shapes on plain backgrounds, 64x64",
}
DEFAULT_MODEL = "shapes"

# --scheduler accepts these short names as well as any scheduler class name fastdiff exports
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpm++_singlestep": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
DTYPES = ("float32", "float16", "bfloat16")


class CliError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("fastdiff").joinpath(BUILTIN_MODELS[name])))


def resolve_model(model: str) -> str:
    """A built-in name -> its packaged folder; a local path must be a pipeline folder; else a hub id."""
    if model in BUILTIN_MODELS:
        path = builtin_path(model)
        if not (path / "model_index.json").is_file():
            raise CliError(f"--model {model}: the built-in model is missing from this install ({path}).")
        return str(path)
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local:
        if not (path / "model_index.json").is_file():
            raise CliError(f"--model {model!r}: not a pipeline folder (no model_index.json in {path}).")
        return str(path)
    if model.count("/") != 1:
        raise CliError(f"--model {model!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), "
                       "a local folder, or a hub id of the form org/name.")
    return model


def scheduler_class(name: str):
    """(scheduler class, from_config overrides) for a short name or a class name."""
    import fastdiff

    class_name, overrides = SCHEDULERS.get(name.lower(), (name, {}))
    cls = getattr(fastdiff, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, fastdiff.SchedulerMixin)):
        raise CliError(f"--scheduler {name!r} is not known; choose one of {', '.join(SCHEDULERS)} or a scheduler class name.")
    return cls, overrides


def scheduler_for(name: str, config):
    cls, overrides = scheduler_class(name)
    return cls.from_config(config, **overrides)


def _positive(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {value}")
        return value

    return parse


def _finite(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdiff", description="Generate images with fastdiff.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text-to-image generation")
    gen.add_argument("prompt")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, local pipeline folder, or hub id")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=_positive("--steps"), default=None, help="denoising steps (default: 25)")
    gen.add_argument("--scheduler", default=None, help=f"one of {', '.join(SCHEDULERS)} or a class name")
    gen.add_argument("--guidance", type=_finite, default=None, help="classifier-free guidance scale (default 7.5)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--num-images", type=_positive("--num-images"), default=1)
    gen.add_argument("--height", type=_positive("--height"), default=None)
    gen.add_argument("--width", type=_positive("--width"), default=None)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", choices=DTYPES, default="float32")
    gen.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto")
    gen.add_argument("--out", default="images", help="output folder for the PNGs")
    sub.add_parser("models", help="list the built-in models")
    return parser


def generate(args) -> list[Path]:
    import torch

    import fastdiff

    model = resolve_model(args.model)
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value % 8:
            raise CliError(f"--{name} {value}: must be a multiple of 8.")
    scheduler_class(args.scheduler) if args.scheduler else None  # an unknown name fails before any loading
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise CliError(f"--device {args.device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available here.")
    fastdiff.ops.use_backend(args.backend)
    pipe = fastdiff.DiffusionPipeline.from_pretrained(model, dtype=getattr(torch, args.dtype)).to(device)
    if "prompt" not in _call_parameters(pipe):
        raise CliError(f"--model {args.model!r}: {type(pipe).__name__} is not a text-to-image pipeline.")
    if args.scheduler:
        pipe.scheduler = scheduler_for(args.scheduler, pipe.scheduler.config)
    settings = {k: v for k, v in dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps or 25,
        guidance_scale=args.guidance if args.guidance is not None else 7.5, height=args.height, width=args.width,
        num_images_per_prompt=args.num_images).items() if v is not None}
    generator = torch.Generator("cpu").manual_seed(args.seed)
    images = pipe(**settings, generator=generator).images
    return _save(images, Path(args.out), {**settings, "model": args.model, "scheduler": type(pipe.scheduler).__name__,
                                          "seed": args.seed, "dtype": args.dtype, "backend": args.backend})


def _call_parameters(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)


def _save(images, out: Path, settings: dict) -> list[Path]:
    """PNGs named by seed and index; the prompt and settings go in their text metadata."""
    from PIL.PngImagePlugin import PngInfo

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        info = PngInfo()
        info.add_text("prompt", settings["prompt"])
        info.add_text("fastdiff", json.dumps(settings, sort_keys=True))
        path = out / f"{settings['seed']:06d}-{i:02d}.png"
        image.save(path, pnginfo=info)
        paths.append(path)
    return paths


def list_models() -> str:
    lines = []
    for name in BUILTIN_MODELS:
        status = "" if (builtin_path(name) / "model_index.json").is_file() else " (missing from this install)"
        lines.append(f"{name}{'  [default]' if name == DEFAULT_MODEL else ''}: {BUILTIN_DESCRIPTIONS[name]}{status}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            print(list_models())
            return 0
        for path in generate(args):
            print(path)
        return 0
    except (CliError, ValueError, OSError) as err:
        print(f"fastdiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
