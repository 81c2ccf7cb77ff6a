"""The twin Q ensemble against the two MLPs it replaced: initialisation, values, gradients, layout; the
bfloat16 mixed precision of the updates."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from safectrl.rl.bc import BCConfig
from safectrl.rl.iql import IQLConfig
from safectrl.rl.networks import (
    DeterministicActor,
    TanhGaussianActor,
    TwinQ,
    ValueNetwork,
    check_precision,
    native_bfloat16,
    precision_context,
    seeded_init,
)


def _reference_q(separate, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(2, batch): each separate MLP on ``[obs, action]``, as the critic computed it before the ensemble."""
    x = torch.cat([obs, action], dim=-1)
    return torch.stack([separate[f"q{j}"]["net"](x).squeeze(-1) for j in (1, 2)])


@pytest.mark.parametrize("hidden", [(256, 256), (8, 16, 4)])
def test_a_seed_gives_the_weights_of_two_mlps_built_one_after_the_other(hidden, separate_q_mlps):
    with seeded_init(7):
        separate = separate_q_mlps(5, 2, hidden)
    with seeded_init(7):
        twin = TwinQ(5, 2, hidden)
    state = TwinQ.state_from_separate(separate.state_dict())
    assert list(state) == list(twin.state_dict())
    for name, value in twin.state_dict().items():
        assert torch.equal(value, state[name]), name
    with seeded_init(8):
        other = TwinQ(5, 2, hidden)
    assert not torch.equal(other.weights[1], twin.weights[1])
    assert not torch.equal(twin.weights[1][0], twin.weights[1][1])  # the members are drawn independently


@pytest.mark.parametrize("hidden", [(256, 256), (8, 16, 4)])
def test_twin_q_gives_the_values_and_gradients_of_two_separate_mlps(hidden, separate_q_mlps):
    torch.manual_seed(0)
    separate = separate_q_mlps(5, 2, hidden)
    twin = TwinQ(5, 2, hidden)  # drawn after the MLPs: other weights until the MLPs' are loaded
    twin.load_state_dict(TwinQ.state_from_separate(separate.state_dict()))
    obs, target = torch.randn(77, 5), torch.randn(77)
    action_ref = torch.rand(77, 2, requires_grad=True)
    action = action_ref.detach().clone().requires_grad_(True)
    q_ref, q = _reference_q(separate, obs, action_ref), twin(obs, action)
    assert q.shape == (2, 77)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(twin.min_q(obs, action), torch.minimum(q_ref[0], q_ref[1]), rtol=0, atol=1e-6)
    # the critic loss of IQL and an actor's loss through the action: both reach the same gradients
    ((q_ref - target) ** 2).mean().backward()
    ((q - target) ** 2).mean().backward()
    torch.testing.assert_close(action.grad, action_ref.grad, rtol=0, atol=1e-6)
    grads = TwinQ.state_from_separate({k: p.grad for k, p in separate.named_parameters()})
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=1e-6)


def test_state_from_separate_refuses_what_is_not_two_mlps(separate_q_mlps):
    state = separate_q_mlps(5, 2, (8, 8)).state_dict()
    with pytest.raises(ValueError, match=r"not the state of two separate Q networks: \['q1\.net\.0\.bias'"):
        TwinQ.state_from_separate({k: v for k, v in state.items() if k != "q2.net.4.bias"})
    with pytest.raises(ValueError, match=r"layer 1 of the two Q networks has weights \(8, 8\), \(8, 9\)"):
        TwinQ.state_from_separate({**state, "q2.net.2.weight": torch.zeros(8, 9)})
    with pytest.raises(ValueError, match="not the state of two separate Q networks"):
        TwinQ.state_from_separate({})


def _linear_output_dtypes(net: nn.Module, *args: torch.Tensor) -> list[torch.dtype]:
    """The dtype of every nn.Linear's output, in call order, for one forward pass of ``net``."""
    dtypes: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
             for m in net.modules() if isinstance(m, nn.Linear)]
    net(*args)
    for h in hooks:
        h.remove()
    return dtypes


def test_bfloat16_multiplies_between_hidden_layers_only():
    """Inside the bfloat16 context the square hidden layers give bfloat16, the layers that read the
    observation and those that give an output float32; outside it, everything is float32."""
    torch.manual_seed(0)
    obs = torch.randn(64, 5)
    f32, b16 = torch.float32, torch.bfloat16
    cases = [(DeterministicActor(5, 2, (32, 32, 32)), (obs,), [f32, b16, b16, f32]),
             (ValueNetwork(5, (32, 32)), (obs,), [f32, b16, f32]),
             (TanhGaussianActor(5, 2, (32, 32), -5, 2), (obs,), [f32, b16, f32, f32])]
    for net, args, expected in cases:
        with precision_context("bfloat16"):
            assert _linear_output_dtypes(net, *args) == expected, type(net).__name__
        with precision_context("float32"):
            assert _linear_output_dtypes(net, *args) == [f32] * len(expected), type(net).__name__
    with precision_context("bfloat16"):  # a one-hidden-layer network has no square layer: all float32
        assert _linear_output_dtypes(ValueNetwork(5, (32,)), obs) == [f32, f32]


@pytest.mark.parametrize("hidden", [(256, 256), (8, 16, 4)])
def test_bfloat16_twin_q_is_float32_out_and_close_to_float32(hidden):
    """The ensemble's outputs and weight gradients stay float32 under bfloat16; its values agree with float32
    to 2 % of their largest (bfloat16 keeps 8 bits of mantissa, measured 0.25-0.33 %) and differ, so the
    hidden layers did use it; the gradients in norm to 10 % (measured 0.04-5 % at this random initialisation,
    largest in the square layers, whose weight gradients are sums over the batch of bfloat16 products)."""
    torch.manual_seed(0)
    twin = TwinQ(5, 2, hidden)
    obs, action, target = torch.randn(128, 5), torch.rand(128, 2), torch.randn(128)
    q32 = twin(obs, action)
    grads32 = torch.autograd.grad(((q32 - target) ** 2).mean(), list(twin.parameters()))
    with precision_context("bfloat16"):
        q16 = twin(obs, action)
        loss = ((q16 - target) ** 2).mean()
    grads16 = torch.autograd.grad(loss, list(twin.parameters()))
    assert q16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads16)
    scale = q32.abs().max().item()
    assert 0 < (q16 - q32).abs().max().item() <= 2e-2 * scale
    for g16, g32 in zip(grads16, grads32):
        assert (g16 - g32).norm().item() <= 0.1 * g32.norm().item()


@pytest.mark.parametrize("config", [BCConfig, IQLConfig])
def test_precision_is_checked(config):
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16; got 'float16'"):
        config(precision="float16")
    assert config().precision == "float32"


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f {}\n"
    for text, expected in ((x86.format("avx512_bf16"), True), (x86.format("amx_bf16 amx_tile"), True),
                           (x86.format("avx512_vnni"), False), ("Features\t: fp asimd bf16 i8mm\n", True),
                           ("Features\t: fp asimd\n", False)):
        (tmp_path / "cpuinfo").write_text(text)
        assert native_bfloat16(tmp_path / "cpuinfo") is expected, text
    assert native_bfloat16(tmp_path / "missing") is None


@pytest.mark.parametrize("native", [False, None])
def test_bfloat16_without_the_hardware_warns_and_float32_never(native, monkeypatch):
    import warnings

    import safectrl.rl.networks as networks

    monkeypatch.setattr(networks, "native_bfloat16", lambda: native)
    for config in (BCConfig, IQLConfig):
        with pytest.warns(RuntimeWarning, match="precision='bfloat16' asked for, but this CPU .*emulates") as got:
            config(hidden=(8, 8), precision="bfloat16")
        assert got[0].filename == __file__  # it points at the line that asked for it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BCConfig(precision="float32")
        assert check_precision("float32") == "float32"
        monkeypatch.setattr(networks, "native_bfloat16", lambda: True)
        IQLConfig(precision="bfloat16")
