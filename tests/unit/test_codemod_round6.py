"""Codemod sweep round 6: shapes from held-out repositories where a fix was wrong, a safe fix
was refused, or a refusal gave no reason (written here in the shape, not copied)."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget


def _findings(source: str, rule: str, name: str = "train.py") -> list[RawFinding]:
    config = EngineConfig(select=frozenset({rule}))
    found = analyse_files([(name, source)], config, workers=1).all_findings()
    return [f for f in found if f.rule == rule]


def _target(finding: RawFinding) -> FixTarget:
    return FixTarget(
        rule=finding.rule,
        file=finding.file,
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )


def _fix(source: str, rule: str, line: int | None = None) -> tuple[str | None, str | None]:
    """The codemod's edit of the finding (on `line`, or the only one) and its refusal."""
    found = [f for f in _findings(source, rule) if line is None or f.line == line]
    (finding,) = found
    codemod = codemod_for(rule)
    assert codemod is not None
    target = _target(finding)
    fixed = codemod.transform(source, target)
    return fixed, None if fixed is not None else codemod.explain(source, target)


# --- target-network-not-synced ------------------------------------------------------------

# SAC trainers: the targets are built fresh, then given the weights by a parameter-copy loop
SAC_HARD_COPY = """\
import torch
from nets import SoftQNetwork


class Trainer:
    def __init__(self, state_dim, action_dim, hidden_dim):
        self.soft_q_net = SoftQNetwork(state_dim, action_dim, hidden_dim)
        self.target_soft_q_net = SoftQNetwork(state_dim, action_dim, hidden_dim)
        for target_param, param in zip(
            self.target_soft_q_net.parameters(), self.soft_q_net.parameters()
        ):
            target_param.data.copy_(param.data)
"""


def test_a_parameter_copy_loop_where_the_target_is_built_syncs_it() -> None:
    assert _findings(SAC_HARD_COPY, "target-network-not-synced") == []


def test_a_loop_over_both_parameter_lists_that_copies_nothing_is_no_sync() -> None:
    frozen = SAC_HARD_COPY.replace(
        "target_param.data.copy_(param.data)", "target_param.requires_grad = False"
    )
    assert len(_findings(frozen, "target-network-not-synced")) == 1


# a layer-fusion helper: two "previous" placeholders, neither holding weights
FUSE_HELPER = """\
import torch
import torch.nn as nn


def fuse_model(m):
    prev_previous_type = nn.Identity()
    previous_type = nn.Identity()
    for name, module in m.named_modules():
        if prev_previous_type == nn.Conv2d and previous_type == nn.BatchNorm2d:
            torch.quantization.fuse_modules(m, [name], inplace=True)
        prev_previous_type = previous_type
        previous_type = type(module)
"""


def test_a_copy_of_a_layer_without_weights_is_not_reported() -> None:
    assert _findings(FUSE_HELPER, "target-network-not-synced") == []


# the copy built before the network it follows: the sync can only go after both
BUILT_FIRST = """\
import torch
from nets import QNetwork


class Agent:
    def __init__(self, dim):
        self.target_qnet = QNetwork(dim)
        self.qnet = QNetwork(dim)
        self.optimizer = torch.optim.Adam(self.qnet.parameters())
"""


def test_the_sync_goes_after_the_followed_network_is_built() -> None:
    fixed, _ = _fix(BUILT_FIRST, "target-network-not-synced")
    assert fixed is not None
    lines = fixed.splitlines()
    sync = lines.index("        self.target_qnet.load_state_dict(self.qnet.state_dict())")
    assert lines.index("        self.qnet = QNetwork(dim)") < sync


# --- rnn-hidden-not-detached --------------------------------------------------------------

# TD3 with LSTM critics: each update re-binds the target network from a soft-update helper
TD3_SOFT_UPDATE = """\
import torch
from networks import *


class TD3Trainer:
    def __init__(self, dim):
        self.q_net1 = QNetworkLSTM(dim)
        self.target_q_net1 = QNetworkLSTM(dim)
        self.q_optimizer1 = torch.optim.Adam(self.q_net1.parameters())

    def target_soft_update(self, net, target_net, tau):
        for target_param, param in zip(target_net.parameters(), net.parameters()):
            target_param.data.copy_(target_param.data * (1.0 - tau) + param.data * tau)
        return target_net

    def update(self, state, action, reward, next_state, hidden, tau=1e-2):
        target_q, _ = self.target_q_net1(next_state, action, hidden)
        q, _ = self.q_net1(state, action, hidden)
        loss = ((q - reward - target_q.detach()) ** 2).mean()
        self.q_optimizer1.zero_grad()
        loss.backward()
        self.q_optimizer1.step()
        self.target_q_net1 = self.target_soft_update(self.q_net1, self.target_q_net1, tau)
"""


def test_a_network_re_bound_by_a_soft_update_is_no_recurrent_state() -> None:
    assert _findings(TD3_SOFT_UPDATE, "rnn-hidden-not-detached") == []


def test_a_state_kept_between_steps_is_still_reported_beside_it() -> None:
    kept = TD3_SOFT_UPDATE.replace(
        "q, _ = self.q_net1(state, action, hidden)",
        "q, self.hidden = self.q_net1(state, action, self.hidden)",
    )
    assert [f.data["state"] for f in _findings(kept, "rnn-hidden-not-detached")] == [
        ["self.hidden"]
    ]


# --- outputs-stored-with-grad -------------------------------------------------------------

# actor-critic: the critic's values are kept on the network and trained on by an update
# function when the episode ends
ACTOR_CRITIC = """\
import torch
import torch.nn.functional as F
from nets import Actor, Critic

actor_net = Actor(4, 2)
critic_net = Critic(4)
critic_optimizer = torch.optim.Adam(critic_net.parameters())


def update(returns):
    value_losses = []
    for value, r in zip(critic_net.saved_values, returns):
        value_losses.append(F.smooth_l1_loss(value, torch.tensor([r])))
    critic_optimizer.zero_grad()
    torch.stack(value_losses).sum().backward()
    critic_optimizer.step()
    del critic_net.saved_values[:]


def train(env, episodes):
    for episode in range(episodes):
        state, done, rewards = env.reset(), False, []
        while not done:
            action = actor_net.select_action(state)
            state_value = critic_net(state)
            state, reward, done = env.step(action)
            critic_net.saved_values.append(state_value)
            rewards.append(reward)
        update(rewards)
"""


def test_outputs_kept_for_a_loss_in_another_function_are_not_reported() -> None:
    assert _findings(ACTOR_CRITIC, "outputs-stored-with-grad") == []


def test_outputs_no_loss_reads_are_still_reported() -> None:
    unread = ACTOR_CRITIC.replace("zip(critic_net.saved_values,", "zip(critic_net.values,")
    assert len(_findings(unread, "outputs-stored-with-grad")) == 1


# --- per-sample-inference -----------------------------------------------------------------

# a PPO agent (a plain class holding its networks) trained by its own `train_net` method in
# the rollout loop, which acts one state at a time through another of its methods
PPO_AGENT = """\
import torch
import torch.nn as nn

device = torch.device("cuda")


class Actor(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 2)

    def forward(self, x):
        return self.fc(x)


class PPO:
    def __init__(self, dim):
        self.actor = Actor(dim).to(device)
        self.optimizer = torch.optim.Adam(self.actor.parameters())
        self.data = []

    def get_action(self, x):
        with torch.no_grad():
            return self.actor(x)

    def train_net(self):
        states = torch.stack([s for s, _ in self.data])
        losses = []
        for epoch in range(4):  # K epochs over the buffer
            loss = self.actor(states).pow(2).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return losses


def main(env):
    model = PPO(4)
    state = env.reset()
    for step in range(1000):
        action = model.get_action(torch.as_tensor(state, device=device).unsqueeze(0))
        state, reward, done = env.step(action)
        model.data.append((torch.as_tensor(state), reward))
        if step % 32 == 0:
            loss_list = model.train_net()
"""


def test_a_method_of_a_local_agent_class_is_not_the_model_replayed() -> None:
    # before: `model.train_net` (named like a network) was compiled with CUDA graphs and
    # its list of losses `.clone()`d
    assert _findings(PPO_AGENT, "per-sample-inference") == []


def test_a_network_held_by_the_agent_is_still_a_model() -> None:
    direct = PPO_AGENT.replace("self.actor", "self.policy_net")
    direct = direct.replace("model.get_action(", "model.policy_net(")
    (finding,) = _findings(direct, "per-sample-inference")
    assert finding.data["model"] == "model.policy_net"


# --- pin-memory-off -----------------------------------------------------------------------

# a translation loader whose collate function builds each batch on the GPU: pinning a CUDA
# tensor raises ("only dense CPU tensors can be pinned")
COLLATE_ON_DEVICE = """\
import torch
from torch.utils.data import DataLoader


def collate_batch(batch, device, pad_id=2):
    bos = torch.tensor([0], device=device)
    src = [torch.cat([bos, torch.tensor(s, device=device)]) for s, _ in batch]
    tgt = [torch.cat([bos, torch.tensor(t, device=device)]) for _, t in batch]
    return torch.nn.utils.rnn.pad_sequence(src, padding_value=pad_id), tgt


def create_dataloaders(dataset, device, batch_size=32):
    def collate_fn(batch):
        return collate_batch(batch, device)

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_fn)


def train(model, dataset, optimizer):
    for src, tgt in create_dataloaders(dataset, torch.device("cuda")):
        loss = model(src, tgt)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def test_a_loader_whose_collate_builds_batches_on_the_device_is_not_pinned() -> None:
    assert _findings(COLLATE_ON_DEVICE, "pin-memory-off") == []


def test_a_collate_that_stays_on_the_host_still_leaves_pinning_off() -> None:
    host = COLLATE_ON_DEVICE.replace(", device=device)", ")")
    assert len(_findings(host, "pin-memory-off")) == 1


# --- refusals that gave no reason ---------------------------------------------------------

# CaiT's layer drop: the module's own helper draws which layers to skip, with no mode flag
LAYER_DROP = """\
from random import randrange

import torch
import torch.nn as nn


def dropout_layers(layers, dropout):
    if dropout == 0:
        return layers
    to_drop = torch.zeros(len(layers)).uniform_(0.0, 1.0) < dropout
    if all(to_drop):
        to_drop[randrange(len(layers))] = False
    return [layer for layer, drop in zip(layers, to_drop) if not drop]


class Transformer(nn.Module):
    def __init__(self, dim, depth, layer_dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim) for _ in range(depth)])
        self.layer_dropout = layer_dropout

    def forward(self, x):
        for layer in dropout_layers(self.layers, dropout=self.layer_dropout):
            x = layer(x) + x
        return x
"""


def test_a_refused_layer_drop_helper_says_why() -> None:
    fixed, reason = _fix(LAYER_DROP, "functional-dropout-always-on")
    assert fixed is None
    assert reason is not None and "`dropout_layers`" in reason


# SAC acting: the policy's action is copied to the host for the environment on every step
ACTION_TO_HOST = """\
import torch
import torch.nn as nn
from torch.distributions import Normal

device = torch.device("cuda")


class PolicyNetwork(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mean = nn.Linear(dim, 1)
        self.log_std = nn.Linear(dim, 1)

    def forward(self, state):
        return self.mean(state), self.log_std(state)

    def get_action(self, state):
        state = torch.FloatTensor(state).unsqueeze(0).to(device)
        mean, log_std = self.forward(state)
        z = Normal(0, 1).sample(mean.shape).to(device)
        action = torch.tanh(mean + log_std.exp() * z)
        action = action.cpu()
        return action[0]


policy_net = PolicyNetwork(3).to(device)
optimizer = torch.optim.Adam(policy_net.parameters())


def train(env, buffer, steps):
    state = env.reset()
    for step in range(steps):
        action = policy_net.get_action(state).detach()
        state, reward, done, _ = env.step(action.numpy())
        buffer.push(state, action, reward)
        loss = policy_net(buffer.sample())[0].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def test_a_refused_copy_of_an_action_to_the_host_says_why() -> None:
    fixed, reason = _fix(ACTION_TO_HOST, "host-sync-in-step")
    assert fixed is None
    assert reason is not None and "`.cpu()`" in reason


# the Annotated Transformer's run_epoch: one loop for training and evaluation, the backward
# and the accumulation step inside `if mode == "train"`
RUN_EPOCH = """\
import torch
from torch.nn.parallel import DistributedDataParallel as DDP


def run_epoch(data_iter, model, loss_compute, optimizer, mode="train", accum_iter=1):
    total_loss = 0
    for i, batch in enumerate(data_iter):
        out = model.forward(batch.src, batch.tgt)
        loss, loss_node = loss_compute(out, batch.tgt_y)
        if mode == "train":
            loss_node.backward()
            if i % accum_iter == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        total_loss += loss
    return total_loss


def train_worker(gpu, model, data, loss_compute):
    model = DDP(model.cuda(gpu), device_ids=[gpu])
    optimizer = torch.optim.Adam(model.parameters())
    run_epoch(data, model, loss_compute, optimizer, mode="train", accum_iter=10)
"""


def test_a_refused_accumulation_inside_a_mode_branch_says_why() -> None:
    fixed, reason = _fix(RUN_EPOCH, "ddp-accum-no-sync")
    assert fixed is None
    assert reason is not None and "backward" in reason


# --- host-sync-in-step --------------------------------------------------------------------

# a DCGAN that logs its losses to TensorBoard on every step, each copied out with
# `.data.cpu().numpy()`
GAN_SCALARS = """\
import torch
from tensorboardX import SummaryWriter

writer = SummaryWriter("./summaries")


def train(D, G, data_loader, d_optimizer, epochs, z_dim=100):
    bce = torch.nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        for i, imgs in enumerate(data_loader):
            step = epoch * len(data_loader) + i + 1
            imgs = imgs.cuda()
            r_logit = D(imgs)
            f_logit = D(G(torch.randn(imgs.size(0), z_dim, device="cuda")).detach())
            d_r_loss = bce(r_logit, torch.ones_like(r_logit))
            d_f_loss = bce(f_logit, torch.zeros_like(f_logit))
            d_loss = d_r_loss + d_f_loss
            D.zero_grad()
            d_loss.backward()
            d_optimizer.step()
            writer.add_scalars(
                "D",
                {"d_loss": d_loss.data.cpu().numpy(), "d_r_loss": d_r_loss.data.cpu().numpy()},
                global_step=step,
            )
"""


def test_a_tensorboard_log_of_host_copies_is_thinned_out() -> None:
    found = _findings(GAN_SCALARS, "host-sync-in-step")
    assert found
    fixed, reason = _fix(GAN_SCALARS, "host-sync-in-step", line=found[0].line)
    assert reason is None and fixed is not None
    assert "            if i % 50 == 0:\n                writer.add_scalars(" in fixed


# a GPT trainer that prints its loss and appends it to a log file on every step
LOG_FILE = """\
import torch


def train(model, loader, optimizer, max_steps, log_file="log.txt"):
    for step in range(max_steps):
        x, y = loader.next_batch()
        logits, loss = model(x.cuda(), y.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step:5d} | loss: {loss.item():.6f}")
        with open(log_file, "a") as f:
            f.write(f"{step} train {loss.item():.6f}\\n")
"""


def test_a_line_appended_to_a_log_file_is_thinned_out_like_a_print() -> None:
    line = LOG_FILE.splitlines().index('            f.write(f"{step} train {loss.item():.6f}\\n")')
    fixed, reason = _fix(LOG_FILE, "host-sync-in-step", line=line + 1)
    assert reason is None and fixed is not None
    assert "            if step % 50 == 0:\n                f.write(" in fixed


# --- manual-attention ---------------------------------------------------------------------

# Swin's window attention: a position bias, then masks added to slices on shifted windows
WINDOW_ATTENTION = """\
import torch
import torch.nn as nn
from einops import rearrange


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, head_dim, shifted, window_size):
        super().__init__()
        self.heads = heads
        self.scale = head_dim**-0.5
        self.shifted = shifted
        self.window_size = window_size
        self.to_qkv = nn.Linear(dim, heads * head_dim * 3, bias=False)
        self.pos_embedding = nn.Parameter(torch.randn(window_size**2, window_size**2))
        self.upper_lower_mask = nn.Parameter(torch.zeros(window_size**2, window_size**2))

    def forward(self, x):
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b w n (h d) -> b h w n d", h=self.heads) for t in (q, k, v))
        dots = torch.einsum("b h w i d, b h w j d -> b h w i j", q, k) * self.scale
        dots += self.pos_embedding
        if self.shifted:
            dots[:, :, -self.window_size :] += self.upper_lower_mask
        attn = dots.softmax(dim=-1)
        out = torch.einsum("b h w i j, b h w j d -> b h w i d", attn, v)
        return rearrange(out, "b h w n d -> b w n (h d)")
"""


def test_a_refused_window_mask_on_a_slice_names_its_condition() -> None:
    fixed, reason = _fix(WINDOW_ATTENTION, "manual-attention")
    assert fixed is None
    assert reason is not None and "if self.shifted" in reason


# REINFORCE with a baseline: NumPy's machine epsilon read with `.item()` in the update
NUMPY_EPS = """\
import numpy as np
import torch
import torch.nn.functional as F


def update(policy, optimizer, log_probs, values, rewards, gamma=0.99):
    eps = np.finfo(np.float32).eps.item()
    returns = torch.tensor(rewards, device="cuda")
    returns = (returns - returns.mean()) / (returns.std() + eps)
    loss = sum(-lp * (r - v.detach()) for lp, v, r in zip(log_probs, values, returns))
    loss = loss + sum(F.smooth_l1_loss(v, r.view(1)) for v, r in zip(values, returns))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train(env, policy, critic, optimizer, episodes):
    for episode in range(episodes):
        log_probs, values, rewards = policy.rollout(env, critic)
        update(policy, optimizer, log_probs, values, rewards)
"""


def test_a_numpy_scalar_read_with_item_is_no_device_sync() -> None:
    assert _findings(NUMPY_EPS, "host-sync-in-step") == []


def test_a_refused_log_under_the_generators_periodic_step_names_its_test() -> None:
    critic = GAN_SCALARS.replace(
        """            writer.add_scalars(
                "D",""",
        """            if step % 5 == 0:
                g_loss = -D(G(torch.randn(imgs.size(0), z_dim, device="cuda"))).mean()
                G.zero_grad()
                g_loss.backward()
                writer.add_scalars("G", {"g_loss": g_loss.data.cpu().numpy()}, global_step=step)
            writer.add_scalars(
                "D",""",
    )
    line = critic.splitlines().index(
        '                writer.add_scalars("G", {"g_loss": g_loss.data.cpu().numpy()}, '
        "global_step=step)"
    )
    fixed, reason = _fix(critic, "host-sync-in-step", line=line + 1)
    assert fixed is None
    assert reason is not None and "if step % 5 == 0" in reason
