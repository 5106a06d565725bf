"""Stage 10: the bidirectional (Vision-Mamba) block and the token classifier built from it."""

import pytest
import torch
import torch.nn.functional as F

from transformers.models.mamba.modeling_mamba import mamba_selective_scan  # the scan's reference (others wrote it)

from ssm_tutor.bidirectional import BiMamba, BiMambaBlock, flip_and_combine
from ssm_tutor.mamba import MambaConfig

CFG = dict(vocab_size=11, hidden_size=8, state_size=4, num_hidden_layers=2)


def _direction(mixer, x):
    """One direction of Vim's Algorithm 1 after the shared in_proj: conv, SiLU, the S6 scan (no gate).
    x: (b, l, E) -> y (b, l, E)."""
    l = x.shape[1]
    xc = F.silu(F.conv1d(x.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias,
                         padding=mixer.conv1d.kernel_size[0] - 1, groups=x.shape[2])[..., :l])   # (b, E, l)
    R, N = mixer.dt_proj.weight.shape[1], mixer.A_log.shape[1]
    dt, B, C = (xc.transpose(1, 2) @ mixer.x_proj.weight.T).split([R, N, N], dim=-1)
    dt = dt @ mixer.dt_proj.weight.T                                                             # (b, l, E)
    y = mamba_selective_scan(xc, dt.transpose(1, 2), -torch.exp(mixer.A_log), B.transpose(1, 2),
                             C.transpose(1, 2), D=mixer.D, delta_bias=mixer.dt_proj.bias, delta_softplus=True)
    return y.transpose(1, 2)                                                                     # (b, l, E)


def test_block_is_vision_mambas_algorithm_1():
    """x + out_proj((y_fwd + flip(y_bwd(flip x))) * SiLU(z)), written out here around transformers' scan."""
    torch.manual_seed(0)
    block = BiMambaBlock(MambaConfig(**CFG)).double()
    x = torch.randn(3, 9, 8, dtype=torch.float64)
    h = block.norm(x)
    E = block.forward_mixer.in_proj.weight.shape[0] // 2
    xz = h @ block.forward_mixer.in_proj.weight.T                             # shared in_proj: (b, l, 2E)
    xs, z = xz[..., :E], xz[..., E:]
    y_fwd = _direction(block.forward_mixer, xs)
    y_bwd = _direction(block.backward_mixer, xs.flip(1)).flip(1)
    expected = x + ((y_fwd + y_bwd) * F.silu(z)) @ block.forward_mixer.out_proj.weight.T
    torch.testing.assert_close(block(x), expected)


def test_the_directions_share_in_proj_and_out_proj_but_not_their_ssm():
    block = BiMambaBlock(MambaConfig(**CFG))
    f, b = block.forward_mixer, block.backward_mixer
    assert f.in_proj.weight is b.in_proj.weight and f.out_proj.weight is b.out_proj.weight
    assert f.A_log is not b.A_log and f.conv1d.weight is not b.conv1d.weight and f.x_proj.weight is not b.x_proj.weight
    model = BiMamba(MambaConfig(**CFG), 3)
    causal = BiMamba(MambaConfig(**CFG), 3, bidirectional=False)
    n_mixer = sum(p.numel() for p in f.parameters())
    n_shared = f.in_proj.weight.numel() + f.out_proj.weight.numel()
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in causal.parameters())
    assert extra == CFG["num_hidden_layers"] * (n_mixer - n_shared)     # parameters() counts shared ones once


def test_reversing_the_input_swaps_the_directions():
    """Feeding the reversed sequence to the block with its two mixers' own weights swapped gives
    the reversed output: the two directions are symmetric."""
    torch.manual_seed(1)
    block = BiMambaBlock(MambaConfig(**CFG)).double()
    swapped = BiMambaBlock(MambaConfig(**CFG)).double()
    swapped.load_state_dict(block.state_dict())
    own = {k: v for k, v in block.state_dict().items() if "in_proj" not in k and "out_proj" not in k}
    swapped.load_state_dict({k.replace("forward_mixer", "TMP").replace("backward_mixer", "forward_mixer")
                             .replace("TMP", "backward_mixer"): v for k, v in own.items()}, strict=False)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    torch.testing.assert_close(swapped(x.flip(1)), block(x).flip(1))


def test_bidirectional_outputs_see_the_future_and_the_causal_ones_do_not():
    torch.manual_seed(2)
    ids = torch.randint(0, 11, (1, 12))
    for bidirectional in (True, False):
        model = BiMamba(MambaConfig(**CFG), 2, bidirectional=bidirectional).double()
        emb = model.embeddings(ids).detach().requires_grad_(True)
        x = emb
        for layer in model.layers:
            x = layer(x)
        model.classifier(model.norm_f(x))[0, 5].sum().backward()          # output at t = 5
        future = emb.grad[0, 6:].abs().sum()
        assert emb.grad[0, :6].abs().sum() > 0
        assert (future > 0) if bidirectional else (future == 0)


def test_flip_and_combine_with_identity_mixers():
    h = torch.randn(2, 5, 3)
    cumsum = lambda t: t.cumsum(1)                                          # a causal "mixer"
    out = flip_and_combine(cumsum, cumsum, h)
    torch.testing.assert_close(out, h.sum(1, keepdim=True) + h)              # before + after + itself twice


def test_classifier_shapes_and_errors():
    model = BiMamba(MambaConfig(**CFG), 3)
    assert model(torch.randint(0, 11, (4, 7))).shape == (4, 7, 3)
    with pytest.raises(ValueError, match="num_labels"):
        BiMamba(MambaConfig(**CFG), 0)
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        model(torch.tensor([[0, 11]]))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))


# ---- the labelling task a causal model cannot solve ---------------------------------------------

def test_occurs_again_labels_match_a_plain_loop():
    from ssm_tutor.tasks import occurs_again

    batch = occurs_again(20, 15, 6, seed=4)
    assert batch.inputs.shape == batch.targets.shape == (20, 15) and batch.targets.dtype == torch.long
    for row, labels in zip(batch.inputs.tolist(), batch.targets.tolist()):
        assert labels == [int(row[t] in row[t + 1:]) for t in range(15)]
    assert torch.equal(occurs_again(20, 15, 6, seed=4).inputs, batch.inputs)


@pytest.mark.parametrize("L,V", [(32, 16), (32, 32), (12, 3)])
def test_causal_ceiling_is_the_best_position_only_guess_measured_on_samples(L, V):
    """The ceiling's formula against the best any position-only rule does on 20 000 sampled sequences."""
    from ssm_tutor.tasks import occurs_again, occurs_again_causal_ceiling

    targets = occurs_again(20_000, L, V, seed=0).targets.float()
    rate = targets.mean(0)                                       # P(label 1 | position): (L,)
    best = torch.maximum(rate, 1 - rate).mean().item()           # guess the likelier label at each position
    assert abs(occurs_again_causal_ceiling(L, V) - best) < 0.01


@pytest.mark.parametrize("bidirectional", [True, False])
def test_checkpoint_round_trip_stores_shared_weights_once(tmp_path, bidirectional):
    from ssm_tutor.checkpoint import read_config, read_tensors

    model = BiMamba(MambaConfig(**CFG), 3, bidirectional=bidirectional).eval()
    model.save_pretrained(tmp_path / "m")
    stored = read_tensors(tmp_path / "m")
    assert not any("backward_mixer.in_proj" in k or "backward_mixer.out_proj" in k for k in stored)
    assert any("backward_mixer.A_log" in k for k in stored) == bidirectional
    assert read_config(tmp_path / "m")["num_labels"] == 3
    again = BiMamba.from_pretrained(tmp_path / "m")
    assert again.bidirectional == bidirectional
    assert again.layers[0].forward_mixer.in_proj is (again.layers[0].backward_mixer or again.layers[0].forward_mixer).in_proj
    ids = torch.randint(0, 11, (2, 6))
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)
