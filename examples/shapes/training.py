"""What the shapes training scripts share: model configs, seeded batches, resumable training loop.

Every batch is a pure function of (seed, step), so a run killed and resumed from its last
checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import math
import os
import time

import torch

from bench.shapes import COLORS, SHAPES, caption, dataset, to_tensor
from examples.shapes.tokenizer import build_tokenizer

# 64x64x3 -> 8x8x4: four blocks, three 2x downsamples (sizes measured by examples/shapes/probe_sizes.py).
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 16, 32, 64), layers_per_block=1, norm_num_groups=8)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(32, 64, 128), attention_head_dim=8, norm_num_groups=32,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=TEXT_CONFIG["hidden_size"])
# Stable Diffusion's noise schedule.
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                        beta_end=0.012, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, timestep_spacing="leading")
ALL_CAPTIONS = [caption(s, c, b) for s in SHAPES for c in COLORS for b in COLORS if b != c]


def build_vae(**overrides):
    import fastdiff

    return fastdiff.AutoencoderKL(**{**VAE_CONFIG, **overrides})


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, **TEXT_CONFIG))


def build_unet():
    import fastdiff

    return fastdiff.UNet2DConditionModel(**UNET_CONFIG)


def batch_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def image_batch(seed: int, step: int, size: int):
    """(images in [-1, 1], captions) of one training step."""
    samples = dataset(size, batch_seed(seed, step))
    return to_tensor([s.image for s in samples]), [s.caption for s in samples]


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class Trainer:
    """AdamW on `modules`, checkpointed to `path` every `every` seconds and at the end; resumes.

        trainer = Trainer({"vae": vae}, "/tmp/run/vae.pt", steps=3000, lr=1e-3)
        for step in trainer: trainer.update(loss_of(step))
    """

    def __init__(self, modules: dict, path: str, steps: int, lr: float, every: float = 120.0, log_every: int = 50):
        self.modules, self.path, self.steps, self.lr = modules, path, steps, lr
        self.every, self.log_every = every, log_every
        params = [p for m in modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.step, self.seconds, self.cpu_seconds, self.losses = 0, 0.0, 0.0, []
        if os.path.exists(path):
            state = torch.load(path, weights_only=True)
            for name, module in modules.items():
                module.load_state_dict(state[name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds, self.cpu_seconds = state["step"], state["seconds"], state["cpu_seconds"]
            print(f"resumed {path} at step {self.step} ({self.seconds / 60:.1f} min so far)", flush=True)

    def __iter__(self):
        self._mark = self._saved = time.perf_counter()
        self._mark_cpu = time.process_time()
        while self.step < self.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.step, self.steps, self.lr)
            yield self.step
        self.save()

    def update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        self.step += 1
        now, now_cpu = time.perf_counter(), time.process_time()
        self.seconds += now - self._mark
        self.cpu_seconds += now_cpu - self._mark_cpu
        self._mark, self._mark_cpu = now, now_cpu
        if self.step % self.log_every == 0:
            recent = self.losses[-self.log_every:]
            print(f"step {self.step}/{self.steps} loss {sum(recent) / len(recent):.5f} "
                  f"{self.seconds / 60:.1f} min wall {self.cpu_seconds / 60:.1f} min cpu", flush=True)
        if now - self._saved > self.every:
            self.save()
            self._saved = time.perf_counter()

    def save(self) -> None:
        state = {name: module.state_dict() for name, module in self.modules.items()}
        state.update(optimizer=self.optimizer.state_dict(), step=self.step, seconds=self.seconds,
                     cpu_seconds=self.cpu_seconds)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        torch.save(state, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)


def set_threads(threads: int | None) -> None:
    """Default: every core. On a shared machine one thread is often faster than two."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
