"""What the Studio asks of the package: plain functions over numpy (those of runs of
whole volumes: :mod:`oasisvq.studio.volumes`).

Images are ``(S, S)`` arrays, uint8 ``0..255`` or float32 in ``[0, 1]``; code grids are
``(h, w)`` int64 in ``[0, K)``; batches add a leading ``n``. Conditions are a dict with
any of the keys ``class`` (a class name), ``position`` (slice position in ``[0, 1]``),
``age`` (years) and ``sex``; a missing key is unknown (the prior's marginal over it).
Errors a user can fix are ``oasisvq.errors`` exceptions with a one-line message.

The run is opened once (:func:`open_run`) and the :class:`Studio` handle is shared by all
browsers: every function here only reads it (its lazy caches fill under a lock).
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oasisvq import metrics
from oasisvq.data.images import IMAGE_SUFFIXES, read_gray8, to_square
from oasisvq.data.loader import load_splits
from oasisvq.data.options import DataOptions
from oasisvq.data.slices import SliceSet
from oasisvq.data.torch_dataset import to_uint8
from oasisvq.data.volumes import read_volume, slice_volume, volume_stem
from oasisvq.errors import ConfigError, DataError, OasisError, RunError
from oasisvq.evaluate.reference import nearest_neighbours
from oasisvq.io import atomic_write, read_json
from oasisvq.prior.base import Prior, SamplingOptions
from oasisvq.prior.sampling import condition_batch
from oasisvq.runs import Run

MAX_UPLOAD_BYTES = 20 * 2**20  # also Gradio's max_file_size: refused before it is stored
MAX_UPLOAD_PIXELS = 8192 * 8192  # checked from the header, before decoding
MAX_UPLOAD_VOXELS = 2**26  # 256 MiB as float32; OASIS volumes have ~6.4 M voxels
MAX_SAMPLES = 64
USAGE_IMAGES = 1024  # training images whose codes make the usage histogram, evenly spread
CONDITION_KEYS = ("class", "position", "age", "sex")


@dataclass
class Studio:
    """An opened run: its VQ-VAE (loaded once), data options and lazy caches."""

    run_dir: Path
    data_root: str | None
    options: DataOptions
    model: Run
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.quantizer.codebook_size)

    @property
    def grid(self) -> int:
        return int(self.model.grid)

    def cached(self, key: str, make):
        """``make()`` once per key, shared by all threads (one lock per key, so that a
        slow ``make`` holds up only the callers that need its result)."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]


def open_run(run_dir: str | Path, data: str | Path | None = None, device: str = "cpu") -> Studio:
    """Load the run's VQ-VAE. ``data`` overrides the data root the run was trained on."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    run = Run.open(run_dir, device)
    root = str(data) if data is not None else run.data_root
    return Studio(run_dir, root, run.data_options, run)


def overview(st: Studio) -> dict:
    """What the page's header says about the run."""
    cfg = st.model.config
    return {
        "run": str(st.run_dir),
        "preset": cfg.name,
        "image_size": st.size,
        "grid": list(cfg.grid_shape) if cfg.dims == 3 else st.grid,
        "codebook_size": st.codebook_size,
        "bits_per_image": cfg.bits_per_image,
        "data": st.data_root or "built-in MNI152",
        "priors": prior_names(st),
    }


# --------------------------------------------------------------------------- data


def splits(st: Studio) -> dict[str, SliceSet]:
    """The run's data splits (decoded once, memory-mapped); {} when the data is gone."""

    def load() -> dict[str, SliceSet]:
        try:
            return load_splits(st.data_root, st.options)
        except OasisError:
            return {}

    return st.cached("splits", load)


def browse(st: Studio, split: str) -> dict[str, list[str]]:
    """The class names and subjects present in ``split`` (for the page's filters)."""
    s = _split(st, split)
    classes = sorted({s.class_names[c] for c in s.classes if 0 <= c < len(s.class_names)})
    return {"classes": classes, "subjects": sorted(set(s.subjects))}


def find_images(
    st: Studio, split: str, class_name: str | None = None, subject: str | None = None
) -> np.ndarray:
    """Indices ``(m,)`` of the images of ``split`` with that class and subject (None: any)."""
    s = _split(st, split)
    keep = np.ones(len(s), bool)
    if class_name:
        names = np.array(s.class_names + ["?"])
        keep &= names[np.where(s.classes >= 0, s.classes, len(s.class_names))] == class_name
    if subject:
        keep &= np.array(s.subjects) == subject
    return np.flatnonzero(keep)


def data_image(st: Studio, split: str, index: int) -> tuple[np.ndarray, str]:
    """Image ``index`` of ``split``, ``(S, S)`` uint8, and a one-line description."""
    s = _split(st, split)
    if not 0 <= index < len(s):
        raise ConfigError(f"image {index} outside [0, {len(s)}) of split {split!r}")
    c = int(s.classes[index])
    label = s.class_names[c] if 0 <= c < len(s.class_names) else "unlabelled"
    return np.array(s.images[index]), f"{split} #{index}: {label}, subject {s.subjects[index]}"


def _split(st: Studio, split: str) -> SliceSet:
    found = splits(st)
    if split not in found:
        where = st.data_root or "built-in brain"
        raise DataError(where, f"no split {split!r} (found: {', '.join(found) or 'none'})")
    return found[split]


@dataclass
class Upload:
    """A decoded upload: one image, or the slices of a volume along the run's axis."""

    name: str
    images: np.ndarray  # (n, S, S) uint8
    positions: np.ndarray  # (n,) float32 slice positions in [0, 1]; NaN for an image


def read_upload(st: Studio, path: str | Path, name: str | None = None) -> Upload:
    """Decode an uploaded PNG/JPEG (or NIfTI volume) with the data readers' checks."""
    path = Path(path)
    name = name or path.name
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise DataError(name, f"{size / 2**20:.0f} MB: uploads are limited to 20 MB")
    if volume_stem(path) is not None:
        return _read_volume_upload(st, path, name)
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise DataError(name, "not a PNG/JPEG image or a NIfTI volume")
    _check_pixels(path, name)
    try:
        img = read_gray8(path)
    except DataError as exc:
        raise DataError(name, exc.reason) from None
    square = to_square(img, st.size, st.options.fit)
    return Upload(name, square[None], np.full(1, np.nan, np.float32))


def _check_pixels(path: Path, name: str) -> None:
    """Refuse an image whose header promises more pixels than a slice can have."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        raise DataError(name, "more pixels than a brain slice can have") from None
    except Exception as exc:  # PIL raises many types for hostile files
        raise DataError(name, f"unreadable or truncated image ({type(exc).__name__})") from None
    if w * h > MAX_UPLOAD_PIXELS:
        raise DataError(name, f"{w}x{h} pixels: larger than a brain slice can be")


def volume_header(path: str | Path, name: str) -> tuple[int, ...]:
    """The shape of an uploaded volume, read from its header alone; a file that cannot
    be read or holds more than ``MAX_UPLOAD_VOXELS`` is a ``DataError`` naming ``name``."""
    try:
        shape = tuple(nib.load(str(path)).shape)  # the header only
    except Exception as exc:
        raise DataError(name, f"unreadable volume ({type(exc).__name__})") from None
    if math.prod(shape) > MAX_UPLOAD_VOXELS:
        raise DataError(name, f"volume of shape {shape}: too large")
    return shape


def _read_volume_upload(st: Studio, path: Path, name: str) -> Upload:
    volume_header(path, name)
    try:
        vol, affine = read_volume(path)
        images, positions, _ = slice_volume(
            vol, affine, st.options.axis, size=st.size, fit=st.options.fit, name=name
        )
    except DataError as exc:
        raise DataError(name, exc.reason) from None
    return Upload(name, images, positions)


# --------------------------------------------------------------------------- codes


@dataclass
class Reconstruction:
    original: np.ndarray  # (S, S) float32 in [0, 1]
    codes: np.ndarray  # (h, w) int64
    recon: np.ndarray  # (S, S) float32 in [0, 1]
    ssim: float
    psnr: float  # dB, data range 1

    @property
    def diff(self) -> np.ndarray:
        """``recon - original``, ``(S, S)`` in ``[-1, 1]``."""
        return self.recon - self.original


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return image.astype(np.float32)


def encode(st: Studio, images: np.ndarray) -> np.ndarray:
    """``(S, S)`` or ``(n, S, S)`` images -> codes ``(h, w)`` or ``(n, h, w)`` int64."""
    x = _unit(images)
    codes = st.model.encode(x if x.ndim == 3 else x[None]).cpu().numpy()
    return codes if x.ndim == 3 else codes[0]


def decode(st: Studio, codes: np.ndarray) -> np.ndarray:
    """Codes ``(h, w)`` or ``(n, h, w)`` -> images ``(S, S)`` / ``(n, S, S)`` float32 in [0, 1]."""
    c = np.array(codes, np.int64)  # a copy: torch wants writable arrays
    try:
        out = st.model.decode(c if c.ndim == 3 else c[None]).clamp(0, 1).cpu().numpy()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return out if c.ndim == 3 else out[0]


def reconstruct(st: Studio, image: np.ndarray) -> Reconstruction:
    """Encode and decode one image ``(S, S)``; SSIM and PSNR as ``oasisvq evaluate`` measures."""
    x = _unit(image)
    codes = encode(st, x)
    recon = decode(st, codes)
    a, b = torch.from_numpy(x)[None, None], torch.from_numpy(recon)[None, None]
    return Reconstruction(
        x, codes, recon, float(metrics.ssim(b, a)[0]), float(metrics.psnr(b, a)[0])
    )


def usage_codes(st: Studio) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``USAGE_IMAGES`` training images, evenly spread, ``(m, S, S)`` uint8, and
    their codes ``(m, h, w)``; encoded once (empty when the data is gone)."""

    def make() -> tuple[np.ndarray, np.ndarray]:
        s = splits(st).get("train")
        if s is None or len(s) == 0:
            return np.zeros((0, st.size, st.size), np.uint8), np.zeros((0, st.grid, st.grid))
        idx = np.unique(np.linspace(0, len(s) - 1, min(len(s), USAGE_IMAGES)).astype(int))
        images = np.asarray(s.images[idx])
        return images, np.concatenate(
            [encode(st, images[i : i + 256]) for i in range(0, len(idx), 256)]
        )

    return st.cached("usage", make)


def code_usage(st: Studio) -> np.ndarray:
    """How often each code occurs in the codes of ``usage_codes``: ``(K,)`` int64."""
    codes = usage_codes(st)[1]
    return np.bincount(codes.ravel().astype(np.int64), minlength=st.codebook_size)


def code_tiles(st: Studio) -> np.ndarray:
    """What a grid of code k alone decodes to, for every k: ``(K, S, S)`` float32."""

    def make() -> np.ndarray:
        k = np.arange(st.codebook_size)
        grids = np.broadcast_to(k[:, None, None], (len(k), st.grid, st.grid))
        return np.concatenate([decode(st, grids[i : i + 64]) for i in range(0, len(k), 64)])

    return st.cached("tiles", make)


def code_examples(st: Studio, k: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` training images (of ``usage_codes``) where code ``k`` covers most cells:
    images ``(m, S, S)`` uint8 and masks ``(m, h, w)`` bool of where it occurs (m <= n)."""
    _check_code(st, k)
    images, codes = usage_codes(st)
    hits = (codes == k).reshape(len(codes), -1).sum(1)
    best = [i for i in np.argsort(-hits, kind="stable")[:n] if hits[i] > 0]
    return images[best], codes[best] == k


def _check_code(st: Studio, k: int) -> None:
    if not 0 <= int(k) < st.codebook_size:
        raise ConfigError(f"code {k} outside [0, {st.codebook_size})")


# --------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class PriorInfo:
    name: str
    arch: str
    conditions: tuple[str, ...]  # of CONDITION_KEYS
    class_names: tuple[str, ...]
    guidance: bool  # classifier-free guidance is possible (conditional, cond_dropout > 0)


def prior_names(st: Studio) -> list[str]:
    """Trained priors of the run, the most recent last."""
    return st.model.priors()


def prior_info(st: Studio, name: str | None) -> PriorInfo:
    cfg = _prior(st, name).cfg
    return PriorInfo(
        cfg.name if name is None else name,
        cfg.arch,
        tuple(cfg.condition),
        tuple(cfg.class_names),
        bool(cfg.condition) and cfg.cond_dropout > 0,
    )


def _prior(st: Studio, name: str | None) -> Prior:
    """The prior ``name`` (None: the newest), loaded once and shared."""
    return st.cached(f"prior {name}", lambda: st.model.prior(name))


def _given(conditions: dict | None) -> dict:
    """The conditions the page set (empty fields are unknown: the marginal)."""
    return {k: v for k, v in (conditions or {}).items() if v not in (None, "")}


def _cond(prior: Prior, conditions: dict | None, n: int) -> dict | None:
    """``conditions`` (CONDITION_KEYS) -> the prior's condition tensors for ``n`` grids."""
    return condition_batch(prior.cfg, _given(conditions), n)


@dataclass
class Samples:
    images: np.ndarray  # (n, S, S) float32 in [0, 1]
    codes: np.ndarray  # (n, h, w) int64
    settings: dict  # what drew them (JSON-ready)


def sample(
    st: Studio,
    n: int = 16,
    prior: str | None = None,
    conditions: dict | None = None,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
    texture: bool = False,
) -> Samples:
    """``n`` new images from ``prior`` (None: the newest); the same seed gives the same.
    texture: draw the run's scan texture onto them (see :func:`has_texture`)."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ConfigError(f"{n} samples: ask for 1 to {MAX_SAMPLES}")
    p = _prior(st, prior)
    # fp32 decoding: the pixels Edit and Reconstruct decode too
    options = SamplingOptions(
        temperature, top_k or None, guidance, seed=seed, precision="fp32", texture=texture
    )
    images, codes = st.model.sample(n, prior or p.cfg.name, options, _given(conditions))
    settings = {
        "run": str(st.run_dir),
        "prior": prior or p.cfg.name,
        "n": n,
        "conditions": {k: v for k, v in (conditions or {}).items() if v not in (None, "")},
        "guidance": guidance,
        "temperature": temperature,
        "top_k": top_k or None,
        "seed": seed,
        "texture": texture,
    }
    return Samples(images.clamp(0, 1).numpy(), codes.numpy(), settings)


def has_texture(st: Studio) -> bool:
    """Whether the run has a usable scan texture (``oasisvq fit-texture``)."""
    try:
        st.model.texture()
    except OasisError:
        return False
    return True


def nearest_training(st: Studio, image: np.ndarray) -> tuple[int, float, np.ndarray]:
    """The training image most like ``image`` by SSIM: its index, the SSIM, ``(S, S)`` uint8."""
    train = _split(st, "train")
    idx, score = nearest_neighbours(_unit(image)[None], train.images)
    return int(idx[0]), float(score[0]), np.array(train.images[idx[0]])


def export_zip(samples: Samples, path: str | Path) -> Path:
    """Write ``samples`` as a ZIP: ``images/sample_NNN.png``, ``codes.npy`` ``(n, h, w)``
    int16 and ``settings.json``."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for i, img in enumerate(to_uint8(samples.images)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                z.writestr(f"images/sample_{i:03d}.png", buf.getvalue())
            buf = io.BytesIO()
            np.save(buf, samples.codes.astype(np.int16))
            z.writestr("codes.npy", buf.getvalue())
            z.writestr("settings.json", json.dumps(samples.settings, indent=2))

    return atomic_write(path, write)


# --------------------------------------------------------------------------- edit, surprise


def set_cells(st: Studio, codes: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """``codes (h, w)`` with the cells of ``mask (h, w)`` set to code ``k``."""
    _check_code(st, k)
    out = np.array(codes, np.int64)
    out[np.asarray(mask, bool)] = int(k)
    return out


@torch.no_grad()
def resample_cells(
    st: Studio,
    codes: np.ndarray,
    mask: np.ndarray,
    prior: str | None = None,
    conditions: dict | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
) -> np.ndarray:
    """Draw the cells of ``mask (h, w)`` anew from the prior given the rest of ``codes (h, w)``.

    A prior with ``inpaint(codes, mask, ...)`` (a masked prior) sees every kept cell; an
    autoregressive prior draws the selected cells in raster order, each given all cells
    before it (kept or redrawn): cells after it cannot inform it."""
    p = _prior(st, prior)
    x = torch.as_tensor(np.array(codes, np.int64))[None].to(st.model.device)
    m = torch.as_tensor(np.asarray(mask, bool))[None].to(x.device)
    cond = _cond(p, conditions, 1)
    gen = torch.Generator(x.device).manual_seed(0 if seed is None else int(seed))
    out = p.inpaint(x, m, cond, SamplingOptions(temperature, top_k or None), gen)
    return out[0].cpu().numpy().astype(np.int64)


@dataclass
class Surprise:
    bits: np.ndarray  # (h, w) float32: -log2 p(code of the cell | the cells before it)
    heat: np.ndarray  # (S, S) float32: ``bits`` upsampled over the image
    total_bits: float
    uniform_bits: float  # h * w * log2 K, what a prior that knows nothing pays


@torch.no_grad()
def surprise(
    st: Studio, codes: np.ndarray, prior: str | None = None, conditions: dict | None = None
) -> Surprise:
    """Per-cell negative log-likelihood of ``codes (h, w)`` under the prior (Pinaya et al.,
    2022): cells the prior finds unlikely are what it finds unusual in the image."""
    p = _prior(st, prior)
    if p.likelihood != "exact":
        raise ConfigError(
            f"prior {p.cfg.name!r} ({p.cfg.arch}) gives no exact per-cell likelihood: "
            "a surprise map needs an autoregressive prior (transformer, pixelcnn)"
        )
    x = torch.as_tensor(np.array(codes, np.int64))[None].to(st.model.device)
    logits = p(x, _cond(p, conditions, 1)).float()  # (1, h, w, K)
    nats = F.cross_entropy(logits.permute(0, 3, 1, 2), x, reduction="none")  # (1, h, w)
    bits = nats / math.log(2)
    heat = F.interpolate(bits[None], size=(st.size, st.size), mode="nearest")[0, 0]
    uniform = x.numel() * math.log2(st.codebook_size)
    return Surprise(bits[0].cpu().numpy(), heat.cpu().numpy(), float(bits.sum()), uniform)


# --------------------------------------------------------------------------- training


def training_history(st: Studio) -> dict[str, list[dict[str, float]]]:
    """Per-epoch rows of ``RUN/history.csv`` ("vqvae") and of each prior ("prior NAME")."""
    found = {"vqvae": st.run_dir / "history.csv"}
    for name in prior_names(st):
        found[f"prior {name}"] = st.run_dir / "priors" / name / "history.csv"
    return {k: _read_history(p) for k, p in found.items() if p.is_file()}


def _read_history(path: Path) -> list[dict[str, float]]:
    def number(v: str | None) -> float:
        try:
            return float(v) if v not in (None, "") else math.nan
        except ValueError:
            return math.nan

    with path.open(newline="") as f:
        return [{k: number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]


def evaluations(st: Studio) -> dict[str, dict]:
    """``RUN/eval-*/metrics.json`` by folder name; a damaged file gives ``{"error": ...}``."""
    out: dict[str, dict] = {}
    for path in sorted(st.run_dir.glob("eval-*/metrics.json")):
        try:
            out[path.parent.name] = dict(read_json(path, "evaluation summary"))
        except RunError as exc:
            out[path.parent.name] = {"error": str(exc)}
    return out


def warm_up(st: Studio) -> None:
    """Run each model once so that the first click does not pay for it."""
    if st.model.dims == 3:
        st.model.reconstruct(np.zeros((1, *st.model.config.volume_shape), np.float32))
    else:
        reconstruct(st, np.zeros((st.size, st.size), np.float32))
    if prior_names(st):
        sample(st, 1, seed=0)
