"""The masked prior (MaskGIT): it learns a pattern, samples and inpaints it in a few
parallel steps, follows its condition under guidance, and works on 2D and 3D grids;
inpainting with the autoregressive priors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from oasisvq.errors import ConfigError
from oasisvq.prior.base import SamplingOptions, make_cond
from oasisvq.prior.data import CodeSet
from oasisvq.prior.maskgit import MaskGITPrior, auto_patch, patchify, unpatchify
from oasisvq.prior.registry import PRIORS, build_prior, get_prior_config
from oasisvq.prior.sampling import drawing_precision, sample_codes
from oasisvq.train.config import TrainConfig
from oasisvq.train.prior_run import train_prior_on_codes
from oasisvq.train.prior_task import evaluate_nll, nll_per_image

K, GRID, CLASSES = 6, (4, 4), ("a", "b", "c")


pytestmark = pytest.mark.usefixtures("one_thread")


def _halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grids whose top half holds one code, 2c or 2c + 1 for class c, and whose bottom half
    holds another, any of the K: any visible cell of a half fixes that half. Ideal NLL
    without the class: 2 log2(6) bits per grid."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, 3, (n,), generator=g)
    top = 2 * cls + torch.randint(0, 2, (n,), generator=g)
    bottom = torch.randint(0, K, (n,), generator=g)
    rows = torch.arange(GRID[0])[None, :, None].expand(n, *GRID)
    return torch.where(rows < 2, top[:, None, None], bottom[:, None, None]), cls


def _valid(codes: torch.Tensor) -> float:
    """Share of grids made of two constant halves."""
    top = (codes[:, :2] == codes[:, :1, :1]).all(2).all(1)
    bottom = (codes[:, 2:] == codes[:, 2:3, :1]).all(2).all(1)
    return float((top & bottom).float().mean())


def _cfg(grid: tuple[int, ...] = GRID, k: int = K, **kw: object):
    small = {"d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0}
    small.update(kw)
    cfg = get_prior_config("maskgit", **small)
    return dataclasses.replace(cfg, codebook_size=k, grid=grid, class_names=CLASSES)


@pytest.fixture(scope="module")
def trained() -> MaskGITPrior:
    """A class-conditional maskgit (automatic patch: 2x2 cells a token) trained 300 steps."""
    torch.manual_seed(0)
    model = build_prior(_cfg(condition="class", cond_dropout=0.3))
    assert model.patch == 2
    codes, cls = _halves(2048, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        i = torch.randint(0, len(codes), (64,))
        loss = model.training_loss(codes[i], {"class": cls[i]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_learns_the_pattern_and_samples_it_in_parallel_steps(trained: MaskGITPrior) -> None:
    g = torch.Generator().manual_seed(0)
    one = trained.sample(
        256, options=SamplingOptions(steps=1), generator=g
    )  # every cell drawn independently
    eight = trained.sample(256, generator=g)  # cfg.steps = 8
    each = trained.sample(
        256, options=SamplingOptions(steps=math.prod(GRID)), generator=g
    )  # one cell a step
    for s in (one, eight, each):
        assert s.shape == (256, *GRID) and s.dtype == torch.long
        assert 0 <= int(s.min()) and int(s.max()) < K
    assert _valid(one) < 0.05
    assert _valid(eight) > 0.75
    assert _valid(each) > 0.9


def test_a_masked_prior_draws_in_bf16_when_asked_and_still_follows_the_pattern(
    trained: MaskGITPrior,
) -> None:
    cpu = torch.device("cpu")
    transformer = build_prior(
        dataclasses.replace(PRIORS["transformer"], codebook_size=K, grid=GRID)
    )
    for prior, precision, bf16 in (
        (trained, "bf16", True),
        (trained, "fp32", False),
        (transformer, "bf16", False),  # one-cell steps gain nothing from bf16
    ):
        with drawing_precision(prior, precision, cpu):
            on = (
                torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
            )
        assert on == bf16, (type(prior).__name__, precision)
    codes = sample_codes(trained, 256, None, SamplingOptions(precision="bf16", seed=0))
    assert _valid(codes) > 0.75


def test_guidance_shifts_samples_towards_the_condition(trained: MaskGITPrior) -> None:
    g = torch.Generator().manual_seed(1)
    cond = make_cond(256, class_index=1)

    def share_of_class_1(guidance: float) -> float:
        s = trained.sample(256, cond, SamplingOptions(guidance=guidance), g)
        return float((s[:, :2] // 2 == 1).float().mean())  # top half: codes 2, 3

    marginal, guided = share_of_class_1(0.0), share_of_class_1(3.0)
    assert marginal < 0.6 and guided > 0.95, (marginal, guided)


def test_inpaint_keeps_known_cells_and_completes_the_pattern(trained: MaskGITPrior) -> None:
    g = torch.Generator().manual_seed(2)
    codes, cls = _halves(256, 1)
    mask = torch.rand(256, *GRID, generator=g) < 0.6
    mask[:, 0, 0] = mask[:, 3, 3] = False  # one known cell in each half fixes the grid
    out = trained.inpaint(codes, mask, {"class": cls}, generator=g)
    assert torch.equal(out[~mask], codes[~mask])
    assert float((out == codes).all(2).all(1).float().mean()) > 0.9
    nothing = trained.inpaint(codes, torch.zeros_like(mask), {"class": cls}, generator=g)
    assert torch.equal(nothing, codes)


def test_likelihood_is_a_repeatable_upper_bound_estimate(trained: MaskGITPrior) -> None:
    codes, _ = _halves(512, 3)
    held = CodeSet.from_codes(codes.numpy())  # class unknown
    r = evaluate_nll(trained, held, torch.device("cpu"))
    ideal = 2 * math.log2(6)
    assert 0.7 * ideal < r["bits_per_image"] < 1.5 * ideal, r  # uniform: 16 log2(6) = 41
    assert r["accuracy"] > 0.6
    a = nll_per_image(trained, held, torch.device("cpu"))
    assert (a == nll_per_image(trained, held, torch.device("cpu"))).all()
    assert trained.likelihood == "upper bound"
    with pytest.raises(ConfigError, match="no exact likelihood|without an exact likelihood"):
        trained.nll(codes)


def test_uniform_model_bound_is_exact() -> None:
    """With all logits equal the bound is T log K for every draw: the (T / m) weights
    make up for the m cells scored."""
    model = build_prior(_cfg(patch=1)).eval()
    torch.nn.init.zeros_(model.head.weight)
    codes = torch.randint(0, K, (32, *GRID))
    r = model.scores(codes, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.nll, torch.full((32,), 16 * math.log(K)))
    assert ((1 <= r.predicted) & (r.predicted <= 16)).all()


def test_training_masks_by_the_cosine_schedule() -> None:
    """The loss sees the masked cells only, at least one per grid, a mean share of
    E[cos(pi/2 u)] = 2/pi, and the mask token in their place."""
    model = build_prior(_cfg(grid=(8, 8), patch=1))
    codes = torch.randint(0, K, (2000, 8, 8))
    seen = {}

    def forward(inputs, cond, select):
        seen.update(inputs=inputs, select=select)
        return model(inputs, cond, select=select)

    torch.manual_seed(0)
    loss = model.training_loss(codes, None, forward=forward)
    inputs, select = seen["inputs"], seen["select"]
    assert torch.equal(inputs[select], torch.full_like(inputs[select], K))
    assert torch.equal(inputs[~select], codes[~select])
    assert select.flatten(1).sum(1).min() >= 1
    assert abs(float(select.float().mean()) - 2 / math.pi) < 0.02
    assert loss.shape == () and loss.requires_grad


@pytest.mark.parametrize("patch", [1, 2])
def test_every_cell_sees_every_other_cell(patch: int) -> None:
    """Bidirectional: changing any one cell changes the logits of every other cell."""
    torch.manual_seed(0)
    model = build_prior(_cfg(patch=patch)).double().eval()
    codes = torch.randint(0, K, (1, *GRID))
    base = model(codes)
    for j in range(16):
        other = codes.clone()
        other.view(-1)[j] = (other.view(-1)[j] + 1) % K
        changed = (model(other) - base).abs().flatten(1, 2).sum(-1)[0] > 1e-9
        assert changed.sum() == 16, (j, changed)


def test_3d_grids_patches_and_positions() -> None:
    grid = (4, 8, 8)
    x = torch.arange(2 * 256).view(2, *grid)
    for p in (1, 2, 4):
        tokens = patchify(x, grid, p)
        assert tokens.shape == (2, 256 // p**3, p**3)
        assert torch.equal(unpatchify(tokens, grid, p), x)
    # a token holds a 2x2x2 block of neighbouring cells, tokens in C order
    assert patchify(x, grid, 2)[0, 1].tolist() == [2, 3, 10, 11, 66, 67, 74, 75]
    assert auto_patch((8, 8)) == 2 and auto_patch((32, 32)) == 4 and auto_patch((16, 16)) == 2
    assert auto_patch(grid) == 2 and auto_patch((5, 5)) == 1
    model = build_prior(_cfg(grid=grid, k=5)).eval()
    assert model.tokens == (2, 4, 4) and model.positions().shape == (32, 32)
    g = torch.Generator().manual_seed(0)
    s = model.sample(3, options=SamplingOptions(steps=3), generator=g)
    assert s.shape == (3, *grid) and int(s.max()) < 5
    mask = torch.rand(3, *grid, generator=g) < 0.5
    out = model.inpaint(s, mask, generator=g)
    assert torch.equal(out[~mask], s[~mask])
    assert model(s).shape == (3, *grid, 5)


def test_the_choice_temperature_orders_cells_and_defaults_to_the_priors(
    trained: MaskGITPrior,
) -> None:
    def draw(temperature: float, choice: float | None, seed: int) -> torch.Tensor:
        options = SamplingOptions(temperature=temperature, choice_temperature=choice)
        return trained.sample(256, options=options, generator=torch.Generator().manual_seed(seed))

    own = trained.cfg.choice_temperature
    assert own > 0 and torch.equal(draw(1.0, None, 0), draw(1.0, own, 0))
    # the same random stream, cells committed in another order: other samples
    assert not torch.equal(draw(1.0, 0.0, 0), draw(1.0, 1000.0, 0))
    # most likely codes in order of confidence alone: nothing random is left
    assert torch.equal(draw(0.0, 0.0, 0), draw(0.0, 0.0, 1))
    with pytest.raises(ConfigError, match="--choice-temperature -1: expected a finite number"):
        SamplingOptions(choice_temperature=-1)


def test_bf16_autocast_sampling_gives_valid_codes(trained: MaskGITPrior) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = trained.sample(
            64, make_cond(64, class_index=2), generator=torch.Generator().manual_seed(0)
        )
    assert s.shape == (64, *GRID) and float((s[:, :2] // 2 == 2).float().mean()) > 0.9


def test_errors_are_one_line_config_errors() -> None:
    model = build_prior(_cfg())
    codes = torch.zeros(2, *GRID, dtype=torch.long)
    with pytest.raises(ConfigError, match="--steps 0: expected a whole number >= 1"):
        model.sample(2, options=SamplingOptions(steps=0))
    with pytest.raises(ConfigError, match=r"codes \(2, 4, 5\).*\(B, 4, 4\)"):
        model.inpaint(torch.zeros(2, 4, 5, dtype=torch.long), torch.ones(2, 4, 5, dtype=torch.bool))
    bad = codes.clone()
    bad[0, 0, 0] = K
    with pytest.raises(ConfigError, match=r"codes in \[0, 6\]: expected \[0, 6\)"):
        model.inpaint(bad, torch.ones_like(codes, dtype=torch.bool))
    with pytest.raises(ConfigError, match="patch 3: expected 0"):
        build_prior(_cfg(patch=3))
    with pytest.raises(ConfigError, match="unconditional: guidance"):
        model.sample(2, make_cond(2, class_index=0), SamplingOptions(guidance=2.0))


def test_trains_through_the_prior_task(tmp_path: Path) -> None:
    """The engine path of `oasisvq train-prior --prior maskgit`: it learns, and validation
    reports the bound and the masked-cell accuracy."""
    codes, cls = _halves(256, 0)
    train = CodeSet.from_codes(codes.numpy(), cls.numpy())
    val = CodeSet.from_codes(_halves(64, 1)[0].numpy())
    tcfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, device="cpu", amp="off")
    model, history = train_prior_on_codes(tmp_path / "mg", _cfg(), train, val, tcfg)
    rows = history.rows
    assert rows[-1]["val_loss_bits_per_image"] < rows[0]["val_loss_bits_per_image"]
    assert "val_accuracy" in rows[-1] and "maskgit" in PRIORS


@pytest.mark.parametrize("name", ["transformer", "pixelcnn-seed-code"])
def test_autoregressive_inpainting_draws_masked_cells_in_raster_order(name: str) -> None:
    """Kept cells stay; at temperature 0 each redrawn cell is the most likely code given
    the cells before it; a full mask draws what sampling draws."""
    cfg = get_prior_config(name, d_model=32, n_layers=2, n_heads=4, filters=16)
    cfg = dataclasses.replace(cfg, codebook_size=K, grid=(5, 4))
    torch.manual_seed(0)
    model = build_prior(cfg).eval()
    for m in model.modules():  # sharpen, so argmax ties do not occur
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.weight.data *= 3
    codes = torch.randint(0, K, (6, 5, 4))
    mask = torch.rand(6, 5, 4) < 0.4
    mask[:, 4] = False  # nothing masked in the last row: it is never computed
    out = model.inpaint(codes, mask, options=SamplingOptions(temperature=0.0))
    assert torch.equal(out[~mask], codes[~mask])
    assert torch.equal(model(out).argmax(-1)[mask], out[mask])
    full = torch.ones_like(mask)
    drawn = model.inpaint(codes, full, generator=torch.Generator().manual_seed(5))
    assert torch.equal(drawn, model.sample(6, generator=torch.Generator().manual_seed(5)))
