"""How to train: plain values, saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    adam_beta2: float = 0.999  # AdamW's second-moment decay (0.99 forgets old scales faster)
    warmup_fraction: float = 0.03  # linear warm-up, then cosine decay to lr * final_lr_ratio
    # ...over at least this many steps (capped at half the run): AdamW's second-moment
    # estimate averages over about 1 / (1 - beta2) steps (100 at beta2 = 0.99), and full-rate
    # steps taken before it has settled are badly scaled
    warmup_steps: int = 100
    final_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # "auto" (bf16 where it helps), "bf16", "fp16", "off"
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 0
    keep_checkpoints: int = 2
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0 = per epoch only)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A saved config; one saved before ``warmup_steps`` existed keeps its schedule."""
        return cls(**{"warmup_steps": 0, **d})
