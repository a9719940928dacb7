import torch

from oasisvq.model.quantizer import QuantizerConfig, VectorQuantizer, kmeans


def test_nearest_code_and_straight_through():
    vq = VectorQuantizer(
        QuantizerConfig(codebook_size=4, dim=2, kmeans_init=False, update="loss")
    ).eval()
    vq.embed.data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = (
        torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.6, 0.7], [-0.2, 0.1]])
        .T.reshape(1, 2, 2, 2)
        .clone()
        .requires_grad_()
    )
    zq, codes, _ = vq(z)
    assert codes.flatten().tolist() == [1, 2, 3, 0]
    assert torch.allclose(zq.flatten(2)[0].T, vq.embed.data[[1, 2, 3, 0]])
    zq.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient


def test_distances_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=64, dim=8, kmeans_init=False)).eval()
    z = torch.randn(4, 8, 8, 8)
    ref = vq(z)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vq(z.to(torch.bfloat16).float())[1]
    assert torch.equal(ref, got)


def test_kmeans_init_uses_the_data():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [0.0, -5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2) for c in centres])
    found = kmeans(x, 3, iters=20)
    d = torch.cdist(found, centres).min(1).values
    assert (d < 0.3).all()
    vq = VectorQuantizer(QuantizerConfig(codebook_size=3, dim=2)).train()
    vq(x.T.reshape(1, 2, 600, 1))
    assert bool(vq.initialised)
    assert (torch.cdist(vq.embed, centres).min(1).values < 0.5).all()


def test_ema_moves_codes_to_their_cluster_means():
    torch.manual_seed(0)
    vq = VectorQuantizer(
        QuantizerConfig(codebook_size=2, dim=1, kmeans_init=False, decay=0.5, restart_threshold=0)
    ).train()
    vq.embed.copy_(torch.tensor([[-1.0], [1.0]]))
    vq.ema_sum.copy_(vq.embed)
    z = torch.tensor([-3.0, -3.0, 2.0, 2.0]).reshape(1, 1, 4, 1)
    for _ in range(30):
        vq(z)
    assert torch.allclose(vq.embed.flatten(), torch.tensor([-3.0, 2.0]), atol=1e-3)


def test_dead_codes_are_restarted_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(
        QuantizerConfig(codebook_size=8, dim=2, kmeans_init=False, decay=0.5)
    ).train()
    vq.embed.copy_(torch.full((8, 2), 100.0))
    vq.embed[0] = 0.0
    vq.ema_sum.copy_(vq.embed)
    z = torch.randn(1, 2, 16, 16)
    for _ in range(5):
        vq(z)
    # every code far from the data was dead and now sits on a data point
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    assert (torch.cdist(vq.embed, flat).min(1).values < 1.0).all()
    assert len(vq(z)[1].unique()) > 1


def test_normalized_codebook_matches_by_direction_and_stays_on_the_sphere():
    torch.manual_seed(0)
    vq = VectorQuantizer(
        QuantizerConfig(codebook_size=2, dim=2, kmeans_init=False, decay=0.5, normalize=True)
    ).train()
    vq.embed.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.2]]))
    vq.ema_sum.copy_(vq.embed)
    # [2.0, 2.2] is nearer to [3, 0] than to [0, 0.2] (2.42 against 2.83), but its
    # direction is nearer to the second code's
    z = torch.tensor([[5.0, 0.5], [4.0, -0.5], [2.0, 2.2], [-0.05, 0.1]]).T.reshape(1, 2, 4, 1)
    zq, codes, _ = vq(z)
    assert codes.flatten().tolist() == [0, 0, 1, 1]
    for _ in range(20):
        zq, codes, _ = vq(z)
    # EMA means are projected back to unit length (plain EMA would put code 0 at [4.5, 0])
    assert torch.allclose(vq.embed.norm(dim=1), torch.ones(2))
    assert torch.allclose(vq.embed[0], torch.tensor([1.0, 0.0]), atol=0.02)
    assert torch.allclose(zq.norm(dim=1), torch.ones(1, 4, 1))
    assert torch.allclose(vq.lookup(codes), zq)
