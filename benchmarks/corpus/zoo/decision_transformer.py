"""Decision Transformer trained offline on trajectories from a simulated 5x5 grid world.

Environment: an agent and a goal on a 5x5 grid, 8 steps per episode, actions up / down / left /
right / stay, reward 1 for a step that brings the agent closer to the goal (Manhattan distance)
or keeps it on the goal, 0 otherwise; the observation is the goal's offset from the agent and
the agent's position, both one-hot. Offline data from three behaviour policies, one per
trajectory: an expert (the move towards the goal along the longer axis), an evasive one (away
from the goal along the axis with the most room) and a patrol (a fixed square pattern of moves
by timestep), each slipping to a random action 10% of the time. Which one produced a trajectory
shows in its returns-to-go (and in its past actions): conditioned on the return, the model
predicts the matching policy's action.

Model (minGPT style, hand-written): every timestep gives three tokens (return-to-go, state,
action) embedded by their own layers plus a timestep embedding, an embedding LayerNorm, two
pre-norm GPT blocks whose attention is ``nn.MultiheadAttention(batch_first=True)`` called with an
explicit boolean causal ``attn_mask`` built from the sequence length, a final LayerNorm, and an
action head read at the state tokens. F.cross_entropy on the behaviour actions.

RAdam with weight decay, clip_grad_norm_ 0.25 (the Decision Transformer default), minibatches
drawn from a fixed offline dataset.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

GRID, HORIZON, N_ACT = 5, 8, 5
MOVES = torch.tensor([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0]])  # (dx, dy) per action
PATROL = torch.tensor([3, 3, 1, 1, 2, 2, 0, 0])  # right, right, down, down, left, ...
SLIP = 0.1
STATE_DIM = 2 * (2 * GRID - 1) + 2 * GRID  # one-hot goal offset (dx, dy), agent x, agent y

D_MODEL, N_HEAD, N_LAYER = 64, 4, 2
N_TRAIN_TRAJ, N_VAL_TRAJ, BATCH = 3000, 400, 64
LR, WEIGHT_DECAY, CLIP = 1e-2, 1e-4, 0.25


def greedy_action(pos, goal):
    """The move towards the goal along its longer axis (stay once there)."""
    dx, dy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
    horizontal = (dx != 0) & (dx.abs() >= dy.abs())
    act = torch.full_like(dx, 4)
    act = torch.where((dy != 0) & ~horizontal, torch.where(dy < 0, 0, 1), act)
    return torch.where(horizontal, torch.where(dx < 0, 2, 3), act)


def evasive_action(pos, goal):
    """The move away from the goal along the axis with the most room left."""
    dx, dy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
    room_x = torch.where(dx > 0, pos[:, 0], GRID - 1 - pos[:, 0])
    room_y = torch.where(dy > 0, pos[:, 1], GRID - 1 - pos[:, 1])
    act_x = torch.where(dx > 0, 2, 3)
    act_y = torch.where(dy > 0, 0, 1)
    act = torch.where(room_x >= room_y, act_x, act_y)
    return torch.where((room_x == 0) & (room_y == 0), 4, act)


def rollout(n, gen):
    """Offline trajectories: returns-to-go (n, T), states (n, T, STATE_DIM), actions (n, T)."""
    pos = torch.randint(0, GRID, (n, 2), generator=gen)
    goal = torch.randint(0, GRID, (n, 2), generator=gen)
    kind = torch.randint(0, 3, (n,), generator=gen)  # expert, evasive, patrol
    states, actions, rewards = [], [], []
    for t in range(HORIZON):
        offset = F.one_hot(goal - pos + GRID - 1, 2 * GRID - 1).flatten(1)
        onehot = torch.cat([offset, F.one_hot(pos, GRID).flatten(1)], dim=1).float()
        patrol = PATROL[t].expand(n)
        act = torch.where(kind == 0, greedy_action(pos, goal),
                          torch.where(kind == 1, evasive_action(pos, goal), patrol))
        slip = torch.rand(n, generator=gen) < SLIP
        act = torch.where(slip, torch.randint(0, N_ACT, (n,), generator=gen), act)
        new = (pos + MOVES[act]).clamp(0, GRID - 1)
        dist_before = (goal - pos).abs().sum(1)
        dist_after = (goal - new).abs().sum(1)
        at_goal = (dist_before == 0) & (dist_after == 0)
        states.append(onehot)
        actions.append(act)
        rewards.append(((dist_after < dist_before) | at_goal).float())
        pos = new
    rewards = torch.stack(rewards, 1)
    rtg = rewards.flip(1).cumsum(1).flip(1)
    return rtg, torch.stack(states, 1), torch.stack(actions, 1)


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(D_MODEL, N_HEAD, batch_first=True)

    def forward(self, x):
        n = x.size(1)
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        out, _ = self.mha(x, x, x, attn_mask=causal, need_weights=False)
        return out


class GPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(),
                                 nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_timestep = nn.Embedding(HORIZON, D_MODEL)
        self.embed_return = nn.Linear(1, D_MODEL)
        self.embed_state = nn.Linear(STATE_DIM, D_MODEL)
        self.embed_action = nn.Embedding(N_ACT, D_MODEL)
        self.embed_ln = nn.LayerNorm(D_MODEL)
        self.blocks = nn.ModuleList(GPTBlock() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.predict_action = nn.Linear(D_MODEL, N_ACT)

    def forward(self, rtg, states, actions):
        B, T = actions.shape
        time = self.embed_timestep(torch.arange(T, device=actions.device))[None]
        r = self.embed_return(rtg[..., None] / 4.0) + time
        s = self.embed_state(states) + time
        a = self.embed_action(actions) + time
        # interleave (R_1, s_1, a_1, R_2, s_2, a_2, ...)
        x = torch.stack([r, s, a], dim=2).reshape(B, 3 * T, D_MODEL)
        x = self.embed_ln(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x).reshape(B, T, 3, D_MODEL)
        return self.predict_action(x[:, :, 1])  # actions predicted from the state tokens


def action_loss(logits, actions):
    return F.cross_entropy(logits.reshape(-1, N_ACT), actions.reshape(-1))


def main():
    p = argparse.ArgumentParser(description="Decision Transformer on an offline grid world")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(777 + a.seed)
    train = rollout(N_TRAIN_TRAJ, gen)
    val = rollout(N_VAL_TRAJ, gen)

    model = DecisionTransformer()
    opt = torch.optim.RAdam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    hist = []
    model.train()
    for step in range(a.steps):
        idx = torch.randint(0, N_TRAIN_TRAJ, (BATCH,))
        rtg, states, actions = (t[idx] for t in train)
        loss = action_loss(model(rtg, states, actions), actions)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        hist.append(loss.item())
        if step % 25 == 0 or step + 1 == a.steps:
            print(f"step {step} action-ce {hist[-1]:.4f}")

    model.eval()
    with torch.no_grad():
        logits = model(*val)
        val_loss = action_loss(logits, val[2]).item()
        acc = (logits.argmax(-1) == val[2]).float().mean().item()
    print(f"val action-ce {val_loss:.4f} acc {acc:.3f}")

    n = max(1, len(hist) // 10)
    res = {"first_loss": hist[0], "train_loss": sum(hist[-n:]) / n, "val_loss": val_loss}
    res = {k: (v if math.isfinite(v) else "nan") for k, v in res.items()}
    print("CORPUS_RESULT " + json.dumps(res))


if __name__ == "__main__":
    main()
