"""LSTM with a mixture-density head over the next latent (World Models' MDN-RNN), per latent cell.

Modules only: no file access. Each cell of the VAE's latent grid is its own sequence; one LSTM,
shared by all cells, reads it with a learned embedding of the cell's position (and what its
neighbours on the grid show), so surprise stays local (a fast cyclist in one corner) instead of
drowning in a frame-wide likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class MDNConfig:
    latent_dim: int = 4  # D: latent dimensions per cell
    cells: int = 64  # number of cells in the latent grid (positions to embed)
    hidden: int = 32  # LSTM units
    mixtures: int = 5  # K: Gaussians in the mixture
    cell_embedding: int = 8  # size of the position embedding
    delta: bool = True  # the LSTM also reads each step's change z[t] - z[t-1]: the dynamics, not only the look
    residual: bool = True  # mixture means are offsets from z[t]: "nothing changes" is the model's default
    cols: int = 0  # columns of the latent grid (cells = rows · cols); 0 = unknown, no neighbours
    context: str = "none"  # what the LSTM reads of a cell's 8 neighbours: "none", "delta" or "both" (latents too)


# LSTM (h, c), each (1, B, hidden), and the last latent read (B, D): what continues a sequence
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class LSTMMDN(nn.Module):
    neighbour_index: torch.Tensor  # (cells, 8): around(rows, cols), with context only

    def __init__(self, cfg: MDNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.cells, cfg.cell_embedding)
        inputs = cfg.latent_dim * (2 if cfg.delta else 1) + cfg.cell_embedding
        inputs += 8 * cfg.latent_dim * {"none": 0, "delta": 1, "both": 2}[cfg.context]
        self.lstm = nn.LSTM(inputs, cfg.hidden, batch_first=True)
        if cfg.context != "none":  # each cell's neighbours, found once (not saved: the config says them)
            if not cfg.cols or cfg.cells % cfg.cols:
                raise ValueError(f"{cfg.cells} cells are no grid of {cfg.cols} columns: the neighbours need one")
            self.register_buffer("neighbour_index", around(cfg.cells // cfg.cols, cfg.cols), persistent=False)
        k, d = cfg.mixtures, cfg.latent_dim
        self.head = nn.Linear(cfg.hidden, k + 2 * k * d)

    def forward(
        self,
        z: torch.Tensor,
        cell: torch.Tensor,
        state: State | None = None,
        around: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, State]:
        """Predict the mixture over z[:, t + 1] from z[:, :t + 1].

        z: (B, T, D) latent sequences; cell: (B,) cell index of each sequence; state: carried from an
        earlier chunk of the same sequences, or None at their start (where the first change is zero);
        around: context(z, change(z, state)), where it was taken before the batch was split (else taken
        here).
        Returns log_pi (B, T, K), mu (B, T, K, D), log_sigma (B, T, K, D) and the new state.
        """
        b, t, _ = z.shape
        moved = change(z, state)
        parts = [z]
        if self.cfg.delta:
            parts.append(moved)
        if self.cfg.context != "none":
            parts.append(self.context(z, moved) if around is None else around)
        parts.append(self.embed(cell).unsqueeze(1).expand(b, t, -1))
        h, (hn, cn) = self.lstm(torch.cat(parts, -1), None if state is None else (state[0], state[1]))
        k, d = self.cfg.mixtures, self.cfg.latent_dim
        out = self.head(h)
        log_pi = torch.log_softmax(out[..., :k], -1)
        mu = out[..., k : k + k * d].reshape(b, t, k, d)
        if self.cfg.residual:
            mu = mu + z.unsqueeze(2)
        log_sigma = out[..., k + k * d :].reshape(b, t, k, d).clamp(-7.0, 5.0)
        return log_pi, mu, log_sigma, (hn, cn, z[:, -1])

    def context(self, z: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        """What each cell's 8 neighbours on the grid show (0 beyond its edge): their changes, and with
        context "both" their latents too. z and its changes `moved` (change(z, state)): (B, T, D),
        B = n · cells with each grid's cells in order → (B, T, 8D) or (B, T, 16D).

        A cell alone cannot tell a person about to walk into it from one appearing out of nothing; its
        neighbours can (README, "The method", and how much it helped: "How a default is chosen").
        """
        seen = moved if self.cfg.context == "delta" else torch.cat([moved, z], -1)
        return neighbours(seen, self.neighbour_index)  # feature by feature: the changes', then the latents'

    @torch.no_grad()
    def dream(
        self,
        first: torch.Tensor,
        cell: torch.Tensor,
        steps: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Roll out sequences by sampling the mixture: first (B, D), cell (B,) → (B, steps + 1, D)."""
        seq, z, state = [first], first.unsqueeze(1), None
        for _ in range(steps):
            log_pi, mu, log_sigma, state = self(z, cell, state)
            z = sample_mixture(log_pi[:, -1], mu[:, -1], log_sigma[:, -1], temperature, generator).unsqueeze(1)
            seq.append(z[:, 0])
        return torch.stack(seq, 1)


def change(z: torch.Tensor, state: State | None = None) -> torch.Tensor:
    """Each latent's change since the one before: z (B, T, D) → (B, T, D); zero at a sequence's start,
    from the state's last latent where a chunk continues one."""
    before = z[:, :1] if state is None else state[2].unsqueeze(1)
    return z - torch.cat([before, z[:, :-1]], 1)


def neighbours(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, T, F), B = n · cells, each grid's cells in row-major order; index: around(rows, cols), of
    cells = rows · cols → (B, T, 8F): the values of each cell's 8 neighbours (0 beyond the grid's
    edge), feature by feature."""
    b, t, f = x.shape
    cells = len(index)
    if b % cells:
        raise ValueError(f"{b} sequences are not whole grids of {cells} cells")
    n = b // cells
    padded = torch.cat([x.view(n, cells, t, f), x.new_zeros(n, 1, t, f)], 1)  # cell `cells`: outside
    return padded[:, index].permute(0, 1, 3, 4, 2).reshape(b, t, 8 * f)


def around(rows: int, cols: int) -> torch.Tensor:
    """(rows · cols, 8) the index of each cell's neighbours, row by row, in reading order; rows · cols
    where a neighbour lies beyond the grid's edge."""
    r, c = torch.arange(rows).view(rows, 1, 1), torch.arange(cols).view(1, cols, 1)
    dr, dc = torch.tensor([-1, -1, -1, 0, 0, 1, 1, 1]), torch.tensor([-1, 0, 1, -1, 1, -1, 0, 1])
    rr, cc = r + dr, c + dc
    inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
    return torch.where(inside, rr * cols + cc, rows * cols).view(rows * cols, 8)


def mdn_nll(target: torch.Tensor, log_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of target under a diagonal Gaussian mixture, per position.

    target: (..., D); log_pi: (..., K); mu, log_sigma: (..., K, D) → (...). Never squeezes a
    batch dimension away, so a batch of one works (the usual scoring case).
    """
    x = target.unsqueeze(-2)
    log_n = -0.5 * (((x - mu) / log_sigma.exp()).pow(2) + 2 * log_sigma + LOG_2PI).sum(-1)
    return -torch.logsumexp(log_pi + log_n, dim=-1)


def sample_mixture(
    log_pi: torch.Tensor,
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sample per row: log_pi (B, K), mu and log_sigma (B, K, D) → (B, D).

    Temperature flattens the choice of component and widens each Gaussian, as in World Models.
    """
    probs = torch.softmax(log_pi / max(temperature, 1e-6), -1)
    k = torch.multinomial(probs, 1, generator=generator)[:, 0]
    rows = torch.arange(mu.shape[0], device=mu.device)
    noise = torch.randn(mu[rows, k].shape, generator=generator, device=mu.device)
    return mu[rows, k] + noise * log_sigma[rows, k].exp() * math.sqrt(temperature)
