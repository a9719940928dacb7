"""``Run``: one way to open a VQ-VAE run folder and everything that hangs off it.

    run = oasisvq.load("runs/compact")     # = Run.open(...)
    codes = run.encode(images)             # (N, S, S) in [0, 1] -> (N, h, w) int64
    images, codes = run.sample(16, prior="transformer")

A run folder holds ``config.json`` (kind, model, training and data settings), its
checkpoints, and below ``priors/`` the prior runs trained on its codes and the cached
code grids of its splits. Everything is read from safetensors, JSON and ``.npz``
files without pickle.
"""

from __future__ import annotations

import re
import sys
from contextlib import nullcontext
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from oasisvq.data.loader import get_split, load_splits
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet, Splits
from oasisvq.data.volumes3d import VolumeSet
from oasisvq.device import amp_dtype, pick_device
from oasisvq.errors import ConfigError, RunError
from oasisvq.model.presets import VQVAEConfig
from oasisvq.model.texture import Texture
from oasisvq.model.vqvae import VQVAE
from oasisvq.prior.base import DEFAULT_OPTIONS, Prior, SamplingOptions
from oasisvq.prior.config import PriorConfig
from oasisvq.prior.data import CodeSet
from oasisvq.prior.registry import build_prior
from oasisvq.prior.sampling import Conditions, condition_batch, sample_codes
from oasisvq.runs import checkpoint
from oasisvq.runs.codes import cached_codes, codes_fingerprint, vqvae_fingerprint
from oasisvq.runs.texture import read_texture

ArrayLike = Tensor | np.ndarray
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_kind(path: Path, kind: str) -> dict:
    """The saved config of the run at ``path``, checked to be of ``kind`` ("vqvae", "prior")."""
    saved = checkpoint.read_config(path)
    if saved.get("kind") != kind:
        raise RunError(f"{path}: not a {kind} run (its config says kind={saved.get('kind')!r})")
    return saved


def prior_dir(run_dir: Path, name: str) -> Path:
    """``RUN/priors/<name>``, with ``name`` checked to be a plain folder name."""
    if not _NAME.match(name):
        raise ConfigError(f"prior run name {name!r}: use letters, digits, '.', '_' and '-'")
    return Path(run_dir) / "priors" / name


def _as_batch(images: ArrayLike, device: torch.device, dims: int = 2) -> Tensor:
    """One image (volume), a batch of them, or a batch with a channel axis -> ``(N, 1, *S)``
    float in [0, 1] (uint8 is scaled) on ``device``."""
    if not isinstance(images, Tensor):
        images = np.asarray(images)
        if not images.flags.writeable:  # a split's memory-mapped cache: torch wants a copy
            images = images.copy()
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == dims:
        x = x[None]
    if x.ndim == dims + 1:
        x = x[:, None]
    if x.ndim != dims + 2 or x.shape[1] != 1:
        want = "(N, S, S) or (N, 1, S, S)" if dims == 2 else "(N, X, Y, Z) or (N, 1, X, Y, Z)"
        raise ConfigError(f"images of shape {tuple(x.shape)}: expected {want}")
    return x.to(device)


class Run:
    """A trained VQ-VAE run: its configs, data, model, priors and cached codes.

    Images are ``(N, S, S)`` or ``(N, 1, S, S)`` floats in ``[0, 1]`` (uint8 0..255 is
    accepted too); codes are ``(N, h, w)`` int64. The VQ-VAE is loaded on first use;
    each prior once.
    """

    def __init__(self, path: Path, saved: dict, device: torch.device) -> None:
        self.path = path
        self.saved = saved
        self.device = device
        self.config: VQVAEConfig = VQVAEConfig.from_dict(saved["model"])
        self._priors: dict[str, Prior] = {}
        self._texture: Texture | None = None

    @classmethod
    def open(cls, path: str | Path, device: str | torch.device = "cpu") -> Run:
        """Open the VQ-VAE run at ``path``; ``device``: "cpu", "cuda", "auto", ..."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path}: no such run folder")
        dev = device if isinstance(device, torch.device) else pick_device(device)
        return cls(path, read_kind(path, "vqvae"), dev)

    # ------------------------------------------------------------------ settings and data

    @property
    def grid(self) -> int:
        """Side of a 2D run's square code grid (``config.grid_shape`` for any run)."""
        return self.config.grid

    @property
    def dims(self) -> int:
        """2: a run of slices; 3: a run of whole volumes."""
        return self.config.dims

    @property
    def data_root(self) -> str | None:
        return self.saved.get("data_root")

    @property
    def data_options(self) -> DataOptions:
        return DataOptions.from_dict(self.saved["data"])

    @property
    def finetune(self) -> dict | None:
        """Where the codes come from when only the decoder was trained further."""
        return self.saved.get("finetune")

    def splits(self, data_root: str | None = None, skip_bad: bool = False) -> Splits:
        """The run's data (or ``data_root``'s, read with the run's options) by split."""
        opts = self.data_options
        if skip_bad and not opts.skip_bad:
            opts = DataOptions.from_dict({**opts.to_dict(), "skip_bad": True})
        return load_splits(data_root if data_root is not None else self.data_root, opts)

    def split(self, name: str, data_root: str | None = None) -> SliceSet | VolumeSet:
        root = data_root if data_root is not None else self.data_root
        return get_split(self.splits(data_root), name, root or "built-in data")

    # ------------------------------------------------------------------ the VQ-VAE

    @cached_property
    def vqvae(self) -> VQVAE:
        model = VQVAE(self.config)
        checkpoint.load_weights(checkpoint.latest(self.path), model)
        return model.to(self.device).eval()

    def vqvae_fingerprint(self) -> str:
        return vqvae_fingerprint(self.path)

    def codes_fingerprint(self) -> str:
        return codes_fingerprint(self.path)

    @torch.no_grad()
    def encode(self, images: ArrayLike) -> Tensor:
        """Images ``(N, S, S)`` (volumes ``(N, X, Y, Z)``) in [0, 1] -> codes ``(N, *grid)``
        int64."""
        return self.vqvae.encode(_as_batch(images, self.device, self.dims))

    @torch.no_grad()
    def decode(
        self, codes: ArrayLike, precision: str = "fp32", batch_size: int | None = None
    ) -> Tensor:
        """Codes ``(N, *grid)`` -> images ``(N, S, S)`` (volumes ``(N, X, Y, Z)``) float32
        in [0, 1] on the CPU, ``batch_size`` at a time (default 128 images or 8 volumes:
        a decoder's full-size activations of a volume take some 100 MB).

        precision: "fp32", "bf16" or "auto" (bf16 where native: twice as fast on such
        CPUs, pixel values within about 2/255 of fp32)."""
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes)
        codes = codes.long()
        k = self.config.quantizer.codebook_size
        if codes.numel() and (codes.min() < 0 or codes.max() >= k):
            raise ConfigError(f"codes must lie in [0, {k})")
        batch_size = batch_size or (8 if self.dims == 3 else 128)
        out = []
        with self._autocast(precision):
            for s in range(0, len(codes), batch_size):
                batch = codes[s : s + batch_size].to(self.device)
                out.append(self.vqvae.decode(batch)[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, *self.config.input_shape)

    def _autocast(self, precision: str):
        if precision == "auto":
            native = amp_dtype("auto", self.device) == torch.bfloat16
            precision = "bf16" if native else "fp32"
        if precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def reconstruct(self, images: ArrayLike) -> Tensor:
        """Images ``(N, S, S)`` -> reconstructions through the quantizer, ``(N, S, S)``."""
        return self.decode(self.encode(images))

    def codes(self, split: str, data: SliceSet | VolumeSet) -> CodeSet:
        """The code grids of ``data``'s slices or volumes (split ``split``), cached in
        ``RUN/priors/``."""
        return cached_codes(self.path, split, data, lambda: self.vqvae, self.device)

    # ------------------------------------------------------------------ priors

    def priors(self) -> list[str]:
        """Names of the prior runs that have a checkpoint, oldest first."""
        root = self.path / "priors"
        if not root.is_dir():
            return []
        latest = {p: checkpoint.latest(p) for p in root.iterdir() if p.is_dir()}
        found = sorted((c.stat().st_mtime_ns, p.name) for p, c in latest.items() if c is not None)
        return [name for _, name in found]

    def prior_name(self, name: str | None = None) -> str:
        """``name`` checked to exist, or the only or most recently trained prior."""
        names = self.priors()
        if name is not None:
            if name not in names:
                known = ", ".join(names) or "none"
                raise ConfigError(
                    f"{self.path}: no trained prior {name!r} (trained: {known}); "
                    "run `oasisvq train-prior`"
                )
            return name
        if not names:
            raise ConfigError(
                f"{self.path}: no prior trained yet; run `oasisvq train-prior {self.path}`"
            )
        return names[-1]

    def prior_dir(self, name: str) -> Path:
        return prior_dir(self.path, name)

    def prior_config(self, name: str | None = None) -> dict:
        """The saved config of prior ``name`` (default: see :meth:`prior_name`)."""
        return read_kind(self.prior_dir(self.prior_name(name)), "prior")

    def prior(self, name: str | None = None) -> Prior:
        """Prior ``name`` in eval mode on the run's device, loaded once."""
        name = self.prior_name(name)
        if name not in self._priors:
            saved = self.prior_config(name)
            model = build_prior(PriorConfig.from_dict(saved["prior"]))
            checkpoint.load_weights(checkpoint.latest(self.prior_dir(name)), model)
            trained_on = saved.get("vqvae", {}).get("checkpoint")
            if trained_on not in (None, self.codes_fingerprint()):
                print(
                    f"warning: prior {name!r} was trained on codes of another VQ-VAE checkpoint",
                    file=sys.stderr,
                )
            self._priors[name] = model.to(self.device).eval()
        return self._priors[name]

    def sample(
        self,
        n: int,
        prior: str | None = None,
        options: SamplingOptions = DEFAULT_OPTIONS,
        conditions: Conditions | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``n`` new images from prior ``prior``, decoded by the run's VQ-VAE.

        Returns ``images (n, S, S)`` (volumes ``(n, X, Y, Z)``) float32 in [0, 1] and
        ``codes (n, *grid)`` int64 (CPU). ``conditions`` (``{"class": ..., "position": ...,
        "age": ..., "sex": ...}``) condition a prior
        trained with them (unset: the marginal). Codes are drawn in fp32; the decoder
        runs at ``options.precision``."""
        p = self.prior(prior)
        codes = sample_codes(p, n, condition_batch(p.cfg, conditions, n), options)
        return self.decode_samples(codes, options), codes

    def decode_samples(self, codes: ArrayLike, options: SamplingOptions) -> Tensor:
        """Sampled codes ``(n, *grid)`` -> images as :meth:`decode` at
        ``options.precision``, with the scan texture drawn from ``options.seed`` when
        ``options.texture``."""
        images = self.decode(codes, precision=options.precision)
        return self.texture().apply(images, options.seed) if options.texture else images

    def texture(self) -> Texture:
        """The scan texture fitted for this run's decoder (``oasisvq fit-texture``)."""
        if self._texture is None:
            shape = tuple(self.config.input_shape)
            self._texture = read_texture(self.path, shape, self.vqvae_fingerprint())
        return self._texture
