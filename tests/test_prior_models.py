"""Properties of the prior networks: causality, blind spot, KV cache, conditioning, sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oasisvq.errors import ConfigError
from oasisvq.prior.base import (
    ConditionEmbedding,
    Draw,
    SamplingOptions,
    guide,
    inverse_cdf,
    make_cond,
    pick,
)
from oasisvq.prior.config import PriorConfig
from oasisvq.prior.pixelcnn import MaskedConv2d, PixelCNN
from oasisvq.prior.registry import PRIORS, build_prior, get_prior_config
from oasisvq.prior.sampling import sample_codes
from oasisvq.prior.transformer import TransformerPrior


def _tiny(name: str, grid: tuple[int, int] = (5, 5), k: int = 6, **kw: object):
    small = {"filters": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}
    small.update(kw)
    cfg = get_prior_config(name, codebook_size=k, grid=grid, **small)
    torch.manual_seed(0)
    return build_prior(cfg).double().eval()


def _dependence(model, grid: tuple[int, int], k: int, cond=None) -> torch.Tensor:
    """``D[i, j]`` = |d logits(cell i) / d one-hot input(cell j)| summed, cells in raster order."""
    h, w = grid
    codes = torch.randint(0, k, (1, h, w))
    x = torch.nn.functional.one_hot(codes, k).permute(0, 3, 1, 2).double().requires_grad_(True)
    out = model.forward_onehot(x, cond)
    if out.shape[1] == k and out.shape[-1] != k:  # PixelCNN: (B, K, h, w) -> (B, h, w, K)
        out = out.permute(0, 2, 3, 1)
    dep = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i in range(h * w):
        (g,) = torch.autograd.grad(out[0, i // w, i % w].sum(), x, retain_graph=True)
        dep[i] = g[0].abs().sum(0).flatten()
    return dep


def test_masks() -> None:
    a, b = MaskedConv2d("A", 1, 1, 7).mask[0, 0], MaskedConv2d("B", 1, 1, 3).mask[0, 0]
    assert (
        a[3, 3] == 0
        and a[3, :3].eq(1).all()
        and a[3, 4:].eq(0).all()
        and a[:3].eq(1).all()
        and a[4:].eq(0).all()
    )
    assert b[1, 1] == 1 and b[1, 2] == 0 and b[2].eq(0).all() and b[0].eq(1).all()
    with pytest.raises(ValueError):
        MaskedConv2d("C", 1, 1, 3)


@pytest.mark.parametrize("name", ["pixelcnn-seed", "pixelcnn-seed-code"])
def test_pixelcnn_is_causal_by_gradients(name: str) -> None:
    """The output at cell i does not depend on inputs at cells >= i (type A first layer)."""
    grid, k = (6, 6), 5
    dep = _dependence(_tiny(name, grid, k), grid, k)
    n = grid[0] * grid[1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool))  # j >= i
    assert dep[future].abs().max() == 0
    assert dep[~future].sum() > 0


def test_pixelcnn_has_a_blind_spot() -> None:
    """Stacked masked convolutions never see some earlier cells (up and to the right)."""
    grid, k = (4, 12), 5
    model = _tiny("pixelcnn-seed-code", grid, k)
    dep = _dependence(model, grid, k)
    h, w = grid
    i = 2 * w + 0  # cell (2, 0)
    j = 1 * w + (w - 1)  # cell (1, 11): earlier in raster order, far to the right
    assert j < i and dep[i, j] == 0
    assert dep[i, 1 * w + 1] > 0  # but the cell just above-right is seen


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_transformer_is_causal_without_blind_spot(kv_heads: int) -> None:
    """Every output depends on every earlier cell and on no later one."""
    grid, k = (4, 5), 6
    dep = _dependence(_tiny("transformer", grid, k, n_kv_heads=kv_heads), grid, k)
    n = grid[0] * grid[1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool))
    assert dep[future].abs().max() == 0
    assert (dep[~future] > 0).all(), "some earlier cell is not seen"


@pytest.mark.parametrize("condition", [(), ("class", "position", "age", "sex")])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("cond_at", ["start", "every"])
def test_kv_cache_gives_the_logits_of_a_full_pass(
    condition: tuple[str, ...], kv_heads: int, cond_at: str
) -> None:
    cfg = dataclasses.replace(
        get_prior_config(
            "transformer",
            d_model=32,
            n_layers=3,
            n_heads=4,
            n_kv_heads=kv_heads,
            condition=condition,
            cond_at=cond_at,
        ),
        codebook_size=7,
        grid=(4, 6),
        class_names=("a", "b", "c"),
        age_mean=70.0,
        age_std=8.0,
    )
    torch.manual_seed(1)
    model = build_prior(cfg).double().eval()
    codes = torch.randint(0, 7, (3, 4, 6))
    cond = {
        "class": torch.tensor([0, 2, -1]),
        "position": torch.tensor([0.1, float("nan"), 0.7]).double(),
        "age": torch.tensor([60.0, 80.0, float("nan")]).double(),
        "sex": torch.tensor([1, -1, 0]),
    }
    full = model(codes, cond)
    cached = model.forward_cached(codes, cond)
    assert full.shape == cached.shape == (3, 4, 6, 7)
    torch.testing.assert_close(cached, full, atol=1e-10, rtol=1e-10)


def test_cond_at_every_feeds_the_condition_to_every_cell() -> None:
    """With attention switched off (zeroed value projections), a cell sees the condition
    only through its own input: "every" lets every cell's logits depend on it, "start"
    only the first cell's."""
    logits = {}
    for cond_at in ("start", "every"):
        cfg = dataclasses.replace(
            get_prior_config(
                "transformer", d_model=16, n_layers=1, condition="sex", cond_at=cond_at
            ),
            codebook_size=5,
            grid=(2, 3),
        )
        torch.manual_seed(0)
        model = build_prior(cfg).eval()
        for name, p in model.named_parameters():
            if "attn" in name:
                p.data.zero_()
        codes = torch.zeros(2, 2, 3, dtype=torch.long)
        logits[cond_at] = model(codes, {"sex": torch.tensor([0, 1])})
    moved = {k: (v[0] - v[1]).abs().flatten(1, 2).amax(-1) for k, v in logits.items()}
    assert (moved["every"] > 1e-4).all()
    assert moved["start"][0] > 1e-4 and (moved["start"][1:] == 0).all()


def test_age_jitter_blurs_the_training_age_only() -> None:
    cfg = dataclasses.replace(
        get_prior_config("transformer", d_model=16, n_layers=1, condition="age", cond_dropout=0),
        age_mean=50.0,
        age_std=15.0,
    )
    ages = {"age": torch.tensor([30.0, 80.0, float("nan")])}
    torch.manual_seed(0)
    plain = ConditionEmbedding(cfg, 16).train()
    jittered = ConditionEmbedding(dataclasses.replace(cfg, age_jitter=3.0), 16).train()
    jittered.load_state_dict(plain.state_dict())
    exact = plain(ages, 3)
    assert torch.equal(exact, plain(ages, 3))  # no jitter: training sees the age as given
    a, b = jittered(ages, 3), jittered(ages, 3)
    assert not torch.allclose(a[:2], exact[:2]) and not torch.allclose(a[:2], b[:2])
    assert torch.equal(a[2], exact[2])  # an unknown age stays unknown
    assert torch.equal(jittered.eval()(ages, 3), exact)  # sampling reads the age as asked
    with pytest.raises(ConfigError, match="age_jitter=-1"):
        get_prior_config("transformer", age_jitter=-1)


@pytest.mark.parametrize(
    ("option", "value", "want"),
    [
        ("dropout", "abc", "a finite number"),
        ("age_jitter", float("nan"), "a finite number"),
        ("mirror", 1, "true or false"),
        ("n_layers", 2.5, "a whole number"),
        ("d_model", True, "a whole number"),
    ],
)
def test_prior_options_of_the_wrong_type_are_one_line_errors(
    option: str, value: object, want: str
) -> None:
    with pytest.raises(ConfigError, match=f"{option}=.*: expected {want}$"):
        get_prior_config("transformer", **{option: value})
    saved = {**get_prior_config("transformer").to_dict(), option: value}  # a stranger's file
    with pytest.raises(ConfigError, match=want):
        PriorConfig.from_dict(saved)
    assert get_prior_config("transformer", dropout=0).dropout == 0  # an int is a number


def test_cond_at_is_checked_and_old_priors_read_as_start() -> None:
    saved = get_prior_config("transformer").to_dict()
    del saved["cond_at"]  # a prior saved before the option existed
    assert PriorConfig.from_dict(saved).cond_at == "start"
    with pytest.raises(ConfigError, match="cond_at='all'"):
        PriorConfig.from_dict({**saved, "cond_at": "all"})
    with pytest.raises(ConfigError, match="cond_at='all'"):
        get_prior_config("transformer", cond_at="all")


def test_kv_cache_fp32() -> None:
    model = _tiny("transformer", (8, 8), 16).float()
    codes = torch.randint(0, 16, (4, 8, 8))
    torch.testing.assert_close(model.forward_cached(codes), model(codes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["pixelcnn-seed-code", "transformer"])
def test_greedy_samples_are_the_argmax_of_a_full_pass(name: str) -> None:
    """Sampling (cached / windowed) and the full forward pass agree: at temperature 0 every
    sampled code is the most likely code given the sampled cells before it."""
    model = _tiny(name, (7, 4), 6, residual_blocks=1).float()
    torch.manual_seed(3)
    for m in model.modules():  # sharpen, so argmax ties do not occur
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.weight.data *= 3
    codes = model.sample(5, options=SamplingOptions(temperature=0.0))
    assert codes.shape == (5, 7, 4)
    assert torch.equal(model(codes).argmax(-1), codes)


def test_pixelcnn_on_codes_equals_the_one_hot_convolution() -> None:
    """The embedding-bag first layer gives the dense one-hot convolution's logits and
    weight gradients, at the grid's edges too, with and without a condition."""
    for condition in ("", "class"):
        cfg = get_prior_config("pixelcnn-seed", filters=16, condition=condition or None)
        cfg = dataclasses.replace(cfg, codebook_size=7, grid=(5, 6), class_names=("x", "y"))
        torch.manual_seed(0)
        model = build_prior(cfg).double().eval()  # eval: no condition dropout
        codes = torch.randint(0, 7, (3, 5, 6))
        cond = make_cond(3, class_index=1) if condition else None
        onehot = torch.nn.functional.one_hot(codes, 7).permute(0, 3, 1, 2).double()
        fast, dense = model.forward_codes(codes, cond), model.forward_onehot(onehot, cond)
        torch.testing.assert_close(fast, dense)
        (g_fast,) = torch.autograd.grad(fast.square().sum(), model.first.weight)
        (g_dense,) = torch.autograd.grad(dense.square().sum(), model.first.weight)
        torch.testing.assert_close(g_fast, g_dense)
        assert g_fast.abs().sum() > 0 and g_fast[..., 3, 3:].abs().max() == 0  # masked taps


def test_pixelcnn_windowed_sampling_equals_naive() -> None:
    model = _tiny("pixelcnn-seed-code", (12, 3), 5).float()
    assert model.reach_rows == 3 + 2
    a = model.sample(6, generator=torch.Generator().manual_seed(5))
    b = model.sample(6, generator=torch.Generator().manual_seed(5), window=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["pixelcnn-seed", "transformer"])
def test_conditioning_changes_outputs(name: str) -> None:
    cfg = dataclasses.replace(
        get_prior_config(name, condition="class,position,age", filters=16, d_model=32, n_layers=2),
        codebook_size=6,
        grid=(4, 4),
        class_names=("x", "y"),
        age_mean=50.0,
        age_std=10.0,
    )
    torch.manual_seed(0)
    model = build_prior(cfg).eval()
    for p in model.parameters():  # away from the init where conditions barely matter
        p.data += 0.05 * torch.randn_like(p)
    codes = torch.randint(0, 6, (2, 4, 4))
    base = make_cond(2, class_index=0, position=0.2, age=40.0)
    ref = model(codes, base)
    for key, value in (("class", 1), ("position", 0.9), ("age", 80.0)):
        other = dict(base)
        other[key] = torch.full_like(base[key], value)
        assert (model(codes, other) - ref).abs().max() > 1e-4, key
    unknown = make_cond(2)
    assert (model(codes, unknown) - ref).abs().max() > 1e-4
    assert torch.equal(model(codes, None), model(codes, unknown))


def test_unconditional_pixelcnn_is_the_reports_network() -> None:
    for name, blocks in (("pixelcnn-seed", 4), ("pixelcnn-seed-code", 2)):
        cfg = dataclasses.replace(PRIORS[name], codebook_size=16, grid=(8, 8))
        m = build_prior(cfg)
        assert isinstance(m, PixelCNN) and m.cond is None
        assert (
            m.first.kernel_size == (7, 7)
            and m.first.in_channels == 16
            and m.first.out_channels == 128
        )
        assert len(m.blocks) == blocks and len(m.head) == blocks
        for b in m.blocks:
            assert b.conv1.kernel_size == (1, 1) and b.pixel_conv.kernel_size == (3, 3)
            assert b.pixel_conv.out_channels == 64 and b.conv2.out_channels == 128
            assert b.pixel_conv.mask[0, 0, 1, 1] == 1  # type B
        assert all(h.kernel_size == (1, 1) and h.out_channels == 128 for h in m.head)
        assert m.out.kernel_size == (1, 1) and m.out.out_channels == 16
    m = build_prior(
        dataclasses.replace(
            PRIORS["pixelcnn-seed"], codebook_size=16, grid=(8, 8), residual_blocks=2, head_layers=3
        )
    )
    assert len(m.blocks) == 2 and len(m.head) == 3


def test_transformer_works_on_32x32_grids() -> None:
    model = _tiny("transformer", (32, 32), 512).float()
    assert isinstance(model, TransformerPrior)
    codes = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 32, 32) and codes.min() >= 0 and codes.max() < 512
    assert model(codes).shape == (2, 32, 32, 512)


def test_pick_temperature_and_top_k() -> None:
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert pick(logits, 0.0).eq(2).all()
    assert pick(logits, 1.0, top_k=1, generator=g).eq(2).all()
    top2 = pick(logits, 10.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {2, 3}
    hot = pick(logits, 100.0, generator=g)
    assert set(hot.tolist()) == {0, 1, 2, 3}
    # the draws follow softmax(logits / T)
    small = torch.tensor([[0.0, 1.0, 2.0, -30.0]]).repeat(40000, 1)
    freq = torch.bincount(pick(small, 1.0, generator=g), minlength=4).float() / 40000
    torch.testing.assert_close(freq, small[0].softmax(-1), atol=0.01, rtol=0)
    assert freq[3] == 0


def test_two_level_draw_follows_the_probabilities_and_skips_zeros() -> None:
    """K = 512: the block-then-code draw (CDF_BLOCK) gives each code its probability,
    never a code of probability 0 (whole empty blocks and single empty codes), and the
    code the one-level inverse CDF gives for the same uniform."""
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(512, generator=g) ** 4
    probs[64:96] = 0  # an empty block
    probs[100] = probs[127] = probs[128] = 0  # empty codes at block edges
    probs[511] = 0
    n = 200_000
    drawn = inverse_cdf(probs.repeat(n, 1), torch.Generator().manual_seed(4))
    freq = torch.bincount(drawn, minlength=512).double() / n
    assert freq[probs == 0].sum() == 0
    torch.testing.assert_close(freq, (probs / probs.sum()).double(), atol=2e-3, rtol=0)
    # the same uniforms through the one-level inverse CDF
    rows = probs.repeat(1000, 1)
    u = torch.rand(1000, 1, generator=torch.Generator().manual_seed(5))
    cdf = rows.cumsum(-1)
    expected = torch.searchsorted(cdf, u * cdf[:, -1:], side="right").squeeze(1)
    got = inverse_cdf(rows, torch.Generator().manual_seed(5))
    assert (got == expected).float().mean() > 0.99  # rounding may move a boundary draw


def test_pick_with_logp_returns_the_log_probability_of_the_drawn_code() -> None:
    logits = torch.randn(64, 256, generator=torch.Generator().manual_seed(6)) * 3
    for draw in (Draw(generator=torch.Generator().manual_seed(7)), Draw(0.5, 10)):
        codes, logp = draw.pick_with_logp(logits)
        expected = logits.log_softmax(-1).gather(1, codes[:, None])[:, 0]
        torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-5)


def test_registry_errors() -> None:
    with pytest.raises(ConfigError):
        get_prior_config("nope")
    with pytest.raises(ConfigError):
        get_prior_config("transformer", condition="colour")
    with pytest.raises(ConfigError):
        get_prior_config("transformer", not_a_field=1)
    with pytest.raises(ConfigError):
        build_prior(PRIORS["transformer"])  # grid and codebook size not set


def test_guide_extrapolates_from_the_unconditional_logits() -> None:
    cond_logits = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    uncond_logits = torch.tensor([[2.0, 2.0], [1.0, -1.0]])
    both = torch.cat([cond_logits, uncond_logits])  # conditional rows first
    torch.testing.assert_close(guide(both, 0.0), uncond_logits)
    torch.testing.assert_close(guide(both, 1.0), cond_logits)
    torch.testing.assert_close(guide(both, 3.0), torch.tensor([[-1.0, 5.0], [-2.0, 2.0]]))


def _conditional(name: str):
    cfg = dataclasses.replace(
        get_prior_config(name, condition="class", filters=16, d_model=32, n_layers=2),
        codebook_size=6,
        grid=(4, 5),
        class_names=("x", "y"),
    )
    torch.manual_seed(0)
    model = build_prior(cfg).eval()
    for p in model.parameters():  # away from the init where conditions barely matter
        p.data += 0.3 * torch.randn_like(p)
    return model


@pytest.mark.parametrize("name", ["pixelcnn-seed", "transformer"])
def test_guided_sampling_interpolates_between_marginal_and_conditional(name: str) -> None:
    """Guidance 0 draws what the unknown condition draws, 1 what the plain conditional draw
    gives (the same uniforms per row); other scales move the samples."""
    model = _conditional(name)
    n, cls_1 = 64, make_cond(64, class_index=1)

    def draw(cond, guidance: float) -> torch.Tensor:
        return sample_codes(model, n, cond, SamplingOptions(seed=7, guidance=guidance))

    plain = draw(cls_1, 1.0)
    assert plain.shape == (n, 4, 5)
    assert torch.equal(draw(cls_1, 0.0), draw(make_cond(n), 1.0))
    assert not torch.equal(plain, draw(make_cond(n), 1.0))
    strong = draw(cls_1, 4.0)
    assert not torch.equal(strong, plain) and 0 <= strong.min() and strong.max() < 6


def test_guidance_needs_a_conditional_prior_trained_with_unknown_conditions() -> None:
    unconditional = _tiny("transformer")
    with pytest.raises(ConfigError, match="unconditional"):
        sample_codes(unconditional, 2, None, SamplingOptions(guidance=2.0))
    sample_codes(unconditional, 2, None, SamplingOptions(guidance=1.0))  # no guidance: fine
    model = _conditional("transformer")
    with pytest.raises(ConfigError, match=">= 0"):
        SamplingOptions(guidance=-1.0)
    model.cfg = dataclasses.replace(model.cfg, cond_dropout=0.0)
    with pytest.raises(ConfigError, match="cond_dropout"):
        sample_codes(model, 2, make_cond(2, class_index=0), SamplingOptions(guidance=2.0))
