"""A small causal language model trained the slow way. torchdoctor's fourth example.

Every line is reasonable on its own; together they leave most of a GPU idle: fp32 everywhere,
hand-written attention, a host sync every step, an unfused optimizer, a synchronous
DataLoader, allocator flushes. Runs on CPU too (slowly): `python train_lm_slow.py --steps 20`.
"""

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class RandomTokens(Dataset):
    def __init__(self, vocab: int, context: int, samples: int) -> None:
        self.vocab, self.context, self.samples = vocab, context, samples

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return torch.randint(0, self.vocab, (self.context + 1,), generator=generator)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, time, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q = q.view(batch, time, self.heads, -1).transpose(1, 2)
        k = k.view(batch, time, self.heads, -1).transpose(1, 2)
        v = v.view(batch, time, self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        mask = torch.tril(torch.ones(time, time)).to(x.device)  # planted: CPU alloc then copy
        scores = scores.masked_fill(mask == 0, float("-inf"))
        out = F.softmax(scores, dim=-1) @ v  # planted: no fused attention kernel
        return self.proj(out.transpose(1, 2).reshape(batch, time, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, context: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        return self.head(self.norm(self.blocks(x)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab, context = 4096, 256
    model = TinyGPT(vocab, context, dim=384, heads=6, layers=6).to(device)
    if torch.cuda.device_count() > 1:
        model = nn.DataParallel(model)  # planted: single-process multi-GPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)  # planted: not fused
    loader = DataLoader(RandomTokens(vocab, context, args.steps * args.batch_size),
                        batch_size=args.batch_size)  # planted: no workers, no pinned memory
    for step, batch in enumerate(loader):
        batch = batch.to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs)  # planted: fp32 matmuls, no autocast, no torch.compile
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}")  # planted: a host sync every step
        torch.cuda.empty_cache()  # planted: flushes the caching allocator every step


if __name__ == "__main__":
    main()
