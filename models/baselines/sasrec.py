"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): causal
self-attention over a user's last ``max_len`` items predicts the next one.

Faithful to the paper's architecture (learned positions, ``layers`` pre-norm blocks of
single-head attention + point-wise feed-forward of width ``dim``, dropout, item embeddings shared
between input and output), trained with many negatives instead of the paper's one: a full softmax
over the catalogue (cross-entropy, the variant that later work found much stronger), or, above
``full_softmax_items`` items, a sampled softmax over ``negatives`` uniform items shared by the
batch (uniform proposals need no logQ correction). Every position of every sequence is a
training example; a long history is cut into ``max_len + 1`` chunks, so all of it is used.

The first ``refit`` trains ``epochs`` from scratch; later ones continue from the current weights
for ``refit_epochs`` on all sequences so far (what a daily job with a warm start does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.baselines.growable import Growable

PAD = 0  # item index i is token i + 1


class SASRecNet(nn.Module):
    def __init__(self, n_tokens: int, dim: int, max_len: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(n_tokens, dim, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.items.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded tokens -> (B, L, dim) states; position t sees tokens <= t only."""
        length = tokens.shape[1]
        x = self.items(tokens) * self.items.embedding_dim ** 0.5 + self.positions(torch.arange(length))[None]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
        x = self.blocks(self.dropout(x), mask=causal, src_key_padding_mask=tokens == PAD, is_causal=True)
        return self.norm(x)

    def grow(self, n_tokens: int) -> None:
        """Room for items that arrived since the last fit (new rows start like a fresh init)."""
        old = self.items.weight.data
        if n_tokens <= len(old):
            return
        grown = nn.Embedding(n_tokens, old.shape[1], padding_idx=PAD)
        nn.init.normal_(grown.weight, std=0.02)
        grown.weight.data[:len(old)] = old
        self.items = grown


class SASRec:
    def __init__(self, dim: int = 64, max_len: int = 50, layers: int = 2, heads: int = 1, dropout: float = 0.2,
                 lr: float = 1e-3, batch_size: int = 128, epochs: int = 20, refit_epochs: int = 2,
                 full_softmax_items: int = 50_000, negatives: int = 1024, seed: int = 0) -> None:
        self.dim, self.max_len, self.layers, self.heads, self.dropout = dim, max_len, layers, heads, dropout
        self.lr, self.batch_size, self.epochs, self.refit_epochs = lr, batch_size, epochs, refit_epochs
        self.full_softmax_items, self.negatives, self.seed = full_softmax_items, negatives, seed
        self.sequences: dict[str, list[int]] = {}  # tokens per user, oldest first
        self.popularity = Growable()
        self.n_items = 0  # catalogue indices seen: 0 .. n_items - 1
        self.net: SASRecNet | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.fits = 0

    def learn(self, user: str, item: int, t_ms: int) -> None:
        self.sequences.setdefault(user, []).append(item + 1)
        self.popularity.add(item, 1.0)
        self.n_items = max(self.n_items, item + 1)

    def _chunks(self) -> torch.Tensor:
        """Every history cut from its end into windows of ``max_len + 1`` tokens, left-padded."""
        width = self.max_len + 1
        rows = []
        for tokens in self.sequences.values():
            for end in range(len(tokens), 1, -(width - 1)):
                window = tokens[max(0, end - width):end]
                rows.append([PAD] * (width - len(window)) + window)
        return torch.tensor(rows, dtype=torch.long) if rows else torch.zeros((0, width), dtype=torch.long)

    def refit(self, now_ms: int) -> None:
        n_tokens = self.n_items + 1
        torch.manual_seed(self.seed + self.fits)
        if self.net is None:
            self.net = SASRecNet(n_tokens, self.dim, self.max_len, self.layers, self.heads, self.dropout)
            epochs = self.epochs
        else:
            self.net.grow(n_tokens)
            epochs = self.refit_epochs
        self._optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)  # new rows: a fresh state
        chunks = self._chunks()
        generator = torch.Generator().manual_seed(self.seed + self.fits)
        self.net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(chunks), generator=generator).split(self.batch_size):
                self._step(chunks[batch], generator)
        self.net.eval()
        self.fits += 1

    def _step(self, chunk: torch.Tensor, generator: torch.Generator) -> None:
        assert self.net is not None and self._optimizer is not None
        states = self.net(chunk[:, :-1])
        targets = chunk[:, 1:]
        live = targets != PAD
        states, targets = states[live], targets[live]
        table = self.net.items.weight
        if len(table) - 1 <= self.full_softmax_items:
            logits = states @ table[1:].T  # every item, the padding row excluded
            loss = nn.functional.cross_entropy(logits, targets - 1)
        else:
            sampled = torch.randint(1, len(table), (self.negatives,), generator=generator)
            positive = (states * table[targets]).sum(-1, keepdim=True)
            negative = states @ table[sampled].T
            negative = negative.masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
            loss = nn.functional.cross_entropy(torch.cat([positive, negative], 1),
                                               torch.zeros(len(targets), dtype=torch.long))
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()

    def scores(self, user: str, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        if self.net is None:
            return self.popularity.take(items)
        known_tokens = len(self.net.items.weight)  # items that arrived after the last fit have no row yet
        tokens = [t for t in self.sequences.get(user, []) if t < known_tokens][-self.max_len:]
        if not tokens:
            return self.popularity.take(items)
        with torch.no_grad():
            state = self.net(torch.tensor([[PAD] * (self.max_len - len(tokens)) + tokens]))[0, -1]
            table = self.net.items.weight
            known = items + 1 < len(table)
            out = np.full(len(items), -np.inf, dtype=np.float64)
            out[known] = (table[torch.from_numpy(items[known] + 1)] @ state).numpy()
        return out
