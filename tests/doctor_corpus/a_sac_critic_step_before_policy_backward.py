"""An actor-critic update steps the critic before the policy loss, built through it, backward.

Reported: https://github.com/rail-berkeley/rlkit/pull/109. The SAC trainer computed the Q losses
and the policy loss (which reads ``Q(s, pi(s))``) up front, then ran the Q optimisers' steps before
``policy_loss.backward()``; with PyTorch 1.5 that backward fails with the in-place error, because
the critic weights it saved were just updated. The merged fix optimises the policy before the
critic, so every backward that needs the old critic weights runs before they change.
Reproduced minimally in our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.doctor_corpus.common import Loop

SOURCE = "https://github.com/rail-berkeley/rlkit/pull/109"
KIND = "step-before-backward"
ARCH = "actor-critic"
STATE = "local"
ERROR = "modified by an inplace operation"

OBS, ACT, BATCH = 8, 2, 16


def _nets() -> nn.ModuleDict:
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(OBS, 16), nn.ReLU(), nn.Linear(16, ACT))
    qf = nn.Sequential(nn.Linear(OBS + ACT, 16), nn.ReLU(), nn.Linear(16, 1))
    return nn.ModuleDict({"policy": policy, "qf": qf})


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A replay batch: observations, the actions taken, the (one-step) returns."""
    g = torch.Generator().manual_seed(i)
    obs = torch.randn(BATCH, OBS, generator=g)
    act = torch.rand(BATCH, ACT, generator=g) * 2 - 1
    ret = obs[:, :1] - act.pow(2).sum(1, keepdim=True)
    return obs, act, ret


def _loop(forward_again: bool) -> Loop:
    nets = _nets()
    policy, qf = nets["policy"], nets["qf"]
    policy_opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    qf_opt = torch.optim.Adam(qf.parameters(), lr=1e-3)

    def step(i: int) -> None:
        obs, act, ret = _batch(i)
        qf_loss = F.mse_loss(qf(torch.cat([obs, act], 1)), ret)
        new_act = torch.tanh(policy(obs))
        policy_loss = -qf(torch.cat([obs, new_act], 1)).mean()
        qf_opt.zero_grad()
        qf_loss.backward()
        qf_opt.step()  # doctor[buggy]: step-before-backward
        if forward_again:
            policy_loss = -qf(torch.cat([obs, new_act], 1)).mean()
        policy_opt.zero_grad()
        policy_loss.backward()  # goes back through qf, whose saved weights just changed
        policy_opt.step()

    return Loop(step=step, model=nets, optimizer=policy_opt)


def buggy() -> Loop:
    return _loop(forward_again=False)


def fixed() -> Loop:
    nets = _nets()
    policy, qf = nets["policy"], nets["qf"]
    policy_opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    qf_opt = torch.optim.Adam(qf.parameters(), lr=1e-3)

    def step(i: int) -> None:
        obs, act, ret = _batch(i)
        qf_loss = F.mse_loss(qf(torch.cat([obs, act], 1)), ret)
        new_act = torch.tanh(policy(obs))
        policy_loss = -qf(torch.cat([obs, new_act], 1)).mean()
        policy_opt.zero_grad()
        policy_loss.backward()
        policy_opt.step()
        qf_opt.zero_grad()  # also drops what policy_loss.backward() left in qf's grads
        qf_loss.backward()
        qf_opt.step()

    return Loop(step=step, model=nets, optimizer=policy_opt)


def applied() -> Loop:
    # doctor's fix, first option: run the forward `policy_loss.backward()` needs again after it
    return _loop(forward_again=True)
