"""The twin Q ensemble against the two MLPs it replaced: initialisation, values, gradients, layout."""

from __future__ import annotations

import pytest
import torch

from safectrl.rl.networks import TwinQ, seeded_init


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
