"""How REFINE gets the model's state at each rollout start: branch it off the teacher-forced pass, or
recompute every prefix from scratch as the paper's code does. Both give the same samples, log-probs, rewards
and gradients; they differ in cost.

branch     One no-grad pass over the sequence, in pieces, gives the entropies, the last-layer hidden states
           and the states at piece boundaries (a few per selection chunk); sequences of one length share it
           as one batch (`scan_group`), each drawing its positions from its own generator. A chunk's position
           is chosen as soon as the pass has its entropies; the state at it is a short re-forward from the nearest
           boundary state (or a cut of the pass itself, when the position lies ahead). The c*n rollouts then
           decode as one batch. The grad pass cuts the sequence at the starts and branches the grad-carrying
           states, so the GRPO gradient reaches what the prefix wrote into the fast weights.
recompute  A no-grad pass for the entropies and hidden states; then every prefix x_<s is re-forwarded in one
           left-padded batch for sampling, prefix + rollout again for the policy's hidden states, and once
           more with grad for the log-probs. Pads are masked, except for LaCT with `recompute_pads=official`:
           the paper's LaCT model ignores the attention mask, so its pads pass through attention and the
           fast-weight update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from refine_bench.models.cache import FastWeightCache
from refine_bench.train.config import RefineConfig
from refine_bench.train.refine import (
    Rollouts,
    chunk_bounds,
    next_token_entropy,
    select_positions,
    select_start,
    selection_entropy,
    selection_radius,
    start_range,
)

# Boundary states kept per selection chunk in the branch scan: more cost less re-forwarding, but hold more
# states (a LaCT-760M state is about 1.5 GB).
BOUNDARIES_PER_CHUNK = 4
# model_type -> whether the paper's model masks left padding (fla's DeltaNet unpads; the LaCT model does not)
OFFICIAL_MASKS_PADDING = {"delta_net": True, "lact_swiglu": False}


@dataclass
class Scan:
    """What the no-grad teacher-forced pass gives the rollout phase."""

    entropy: torch.Tensor  # [S] raw next-token entropies
    hidden: torch.Tensor  # [S, D] last-layer hidden states
    starts: list[int]
    states: FastWeightCache | None  # the state after x_<s for each start, batched [c] (branch only)
    first_logits: torch.Tensor  # [c, V] logits at s - 1 (the first rollout token's distribution)


def stack_states(caches: list[FastWeightCache]) -> FastWeightCache:
    """Concatenate single-row caches along the batch (rows may have consumed different numbers of tokens),
    keeping the autograd graph."""
    def cat(values):
        first = values[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(values, dim=0)
        if isinstance(first, tuple | list):
            return type(first)(cat([v[i] for v in values]) for i in range(len(first)))
        if isinstance(first, dict):
            return {key: cat([v[key] for v in values]) for key in first}
        return first

    out = FastWeightCache(len(caches[0].layers), max(c.seen_tokens for c in caches))
    out.layers = [cat([c.layers[i] for c in caches]) for i in range(len(out.layers))]
    return out


def shallow_copy(cache: FastWeightCache) -> FastWeightCache:
    """A new cache object over the same tensors: the models replace layer states, never write into them, so
    a later forward from the copy leaves the original untouched."""
    return cache.map(lambda t: t)


def _forward(model, ids: torch.Tensor, cache: FastWeightCache, hidden: bool = False, last_only: bool = False):
    return model(ids, cache=shallow_copy(cache), use_cache=True, output_hidden_states=hidden,
                 logits_to_keep=1 if last_only else 0)


def _reforward(model, ids: torch.Tensor, start: int, end: int, cache: FastWeightCache | None) -> FastWeightCache:
    """The state after ids[:, :end], continuing from `cache` (the state after ids[:, :start]; None = empty)."""
    if start == end and cache is not None:
        return cache
    return _forward(model, ids[:, start:end], cache or model.new_cache(), last_only=True).cache


@torch.no_grad()
def sample_continuations(model, states: FastWeightCache, first_logits: torch.Tensor, cfg: RefineConfig,
                         generator: torch.Generator | None, want_hidden: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """k tokens for each of the c*n rollouts, decoded as one batch from `states` [c] (each repeated n times).

    Tokens are drawn at temperature cfg.sample_temperature (top-p 1, no top-k) on the CPU generator, EOS
    excluded unless cfg.rollout_eos; old log-probs are those of the tempered policy (EOS included, as the
    paper's code recomputes them from the model). Returns tokens, old log-probs [R, k] and the policy's
    last-layer hidden states at the sampled tokens [R, k, D] (None when not wanted).
    """
    n, k = cfg.num_rollouts, cfg.rollout_len
    cache = states.repeat_interleave(n)
    logits = first_logits.float().repeat_interleave(n, 0)
    eos = getattr(model.config, "eos_token_id", None)
    tokens, logps, hiddens = [], [], []
    for j in range(k):
        logp = torch.log_softmax(logits / cfg.sample_temperature, dim=-1)
        probs = logp.exp()
        if not cfg.rollout_eos and eos is not None:
            probs[:, eos] = 0.0
        tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(logp.device)
        tokens.append(tok)
        logps.append(logp.gather(-1, tok))
        if j + 1 < k or want_hidden:
            out = model(tok, cache=cache, use_cache=True, output_hidden_states=want_hidden)
            cache, logits = out.cache, out.logits[:, -1].float()
            if want_hidden:
                hiddens.append(out.hidden_states[-1][:, -1])
    h_pred = torch.stack(hiddens, dim=1) if want_hidden else None
    return torch.cat(tokens, 1), torch.cat(logps, 1), h_pred


def _rollout_logp(step_logits: torch.Tensor, tokens: torch.Tensor, cfg: RefineConfig) -> torch.Tensor:
    """log pi(y_j | ...) [R, k] from the logits that predict each rollout token [R, k, V]."""
    logp = torch.log_softmax(step_logits.float() / cfg.sample_temperature, dim=-1)
    return logp.gather(-1, tokens[..., None])[..., 0]


class BranchEngine:
    """States branched off the teacher-forced pass (see the module docstring)."""

    def scan(self, model, ids: torch.Tensor, cfg: RefineConfig, generator: torch.Generator | None) -> Scan:
        return self.scan_group(model, ids, cfg, [generator])[0]

    @torch.no_grad()
    def scan_group(self, model, ids: torch.Tensor, cfg: RefineConfig,
                   generators: list[torch.Generator | None]) -> list[Scan]:
        """The scans of B sequences of one length, ids [B, S], in one batched pass; each sequence draws its
        positions from its own generator, so a sequence gets the same scan alone or in any group."""
        rows, length = ids.shape
        if length < cfg.min_sequence_length():
            raise ValueError(f"sequence of {length} tokens is too short for {cfg.num_chunks} chunks with a margin "
                             f"of {cfg.margin}")
        c = cfg.num_chunks
        bounds = chunk_bounds(length, c)
        stride = max(1, -(-length // (BOUNDARIES_PER_CHUNK * c)))
        radius = selection_radius(cfg)
        cache, pos = model.new_cache(), 0
        kept: list[tuple[int, FastWeightCache]] = []  # boundary states (all rows) still needed, by position
        waiting: dict[int, list[tuple[int, int]]] = {}  # a position ahead of the pass -> (row, chunk) taken there
        entropies, hiddens = [], []
        starts: list[list[int]] = [[0] * c for _ in range(rows)]
        states: list[list[FastWeightCache | None]] = [[None] * c for _ in range(rows)]
        chosen = 0
        while chosen < c or waiting:
            end = min([(pos // stride + 1) * stride, length, *[p for p in waiting if p > pos]])
            out = _forward(model, ids[:, pos:end], cache, hidden=True)
            cache = out.cache
            entropies.append(next_token_entropy(out.logits))
            hiddens.append(out.hidden_states[-1])
            pos = end
            for b, i in waiting.pop(pos, []):
                states[b][i] = cache.index_select([b])
            if pos < length:
                kept.append((pos, cache))
            entropy = selection_entropy(torch.cat(entropies, dim=1), cfg)
            while chosen < c and (pos == length or pos >= bounds[chosen + 1] + radius):
                i, chosen = chosen, chosen + 1
                for b in range(rows):
                    s = select_start(entropy[b], bounds[i], bounds[i + 1], length, cfg, generators[b])
                    starts[b][i] = s
                    if s > pos:
                        waiting.setdefault(s, []).append((b, i))
                        continue
                    base = max((p for p, _ in kept if p <= s), default=0)
                    base_state = next((st.index_select([b]) for p, st in kept if p == base), None)
                    states[b][i] = _reforward(model, ids[b : b + 1], base, s, base_state)
            if chosen < c:  # drop boundary states no remaining chunk can start from
                lowest = start_range(bounds[chosen], bounds[chosen + 1], length, cfg.margin)[0]
                floor = max((p for p, _ in kept if p <= lowest), default=0)
                kept = [(p, st) for p, st in kept if p >= floor]
            else:
                kept = []
        entropy, hidden = torch.cat(entropies, dim=1), torch.cat(hiddens, dim=1)
        head = model.get_output_embeddings()
        # the logits at s - 1, recomputed from the kept hidden states rather than keeping [S, V] logits
        return [Scan(entropy[b], hidden[b], starts[b], stack_states(states[b]),
                     head(hidden[b][[s - 1 for s in starts[b]]]).float()) for b in range(rows)]

    def sample(self, model, ids, scan: Scan, cfg: RefineConfig, generator):
        return sample_continuations(model, scan.states, scan.first_logits, cfg, generator)

    def score(self, model, ids: torch.Tensor, rollouts: Rollouts, cfg: RefineConfig
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad pass: logits [1, S, V] for NTP, cut at the starts, and the rollouts' log-probs [R, k] from the
        branched grad-carrying states."""
        cuts = sorted(set(rollouts.starts))
        cache, pos, pieces, at = model.new_cache(), 0, [], {}
        for end in [*cuts, ids.shape[1]]:
            if end > pos:
                out = _forward(model, ids[:, pos:end], cache)
                cache = out.cache
                pieces.append(out.logits)
                pos = end
            at[end] = cache
        logits = torch.cat(pieces, dim=1)
        n = cfg.num_rollouts
        states = stack_states([at[s] for s in rollouts.starts]).repeat_interleave(n)
        first = logits[0, [s - 1 for s in rollouts.starts]].repeat_interleave(n, 0)
        out = model(rollouts.tokens, cache=states, use_cache=True)
        step_logits = torch.cat([first[:, None], out.logits[:, :-1]], dim=1)
        return logits, _rollout_logp(step_logits, rollouts.tokens, cfg)


class RecomputeEngine:
    """Every prefix re-forwarded from scratch, left-padded into one batch (the paper's code)."""

    @staticmethod
    def _masks_padding(model, cfg: RefineConfig) -> bool:
        if cfg.recompute_pads == "masked":
            return True
        return OFFICIAL_MASKS_PADDING.get(getattr(model.config, "model_type", ""), True)

    def _padded(self, model, rows: list[torch.Tensor], cfg: RefineConfig):
        """Left-padded batch [R, L] of 1-D token rows and its attention mask (None when pads are not masked)."""
        width = max(len(r) for r in rows)
        pad_id = getattr(model.config, "pad_token_id", None) or 0
        batch = torch.full((len(rows), width), pad_id, dtype=torch.long, device=rows[0].device)
        mask = torch.zeros_like(batch)
        for i, row in enumerate(rows):
            batch[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        return batch, (mask if self._masks_padding(model, cfg) else None)

    @torch.no_grad()
    def scan(self, model, ids: torch.Tensor, cfg: RefineConfig, generator) -> Scan:
        out = model(ids, output_hidden_states=True)
        entropy = next_token_entropy(out.logits[0])
        starts = select_positions(entropy, cfg, generator)
        return Scan(entropy, out.hidden_states[-1][0], starts, None, out.logits[0, [s - 1 for s in starts]].float())

    def scan_group(self, model, ids: torch.Tensor, cfg: RefineConfig, generators) -> list[Scan]:
        return [self.scan(model, ids[b : b + 1], cfg, g) for b, g in enumerate(generators)]

    @torch.no_grad()
    def sample(self, model, ids, scan: Scan, cfg: RefineConfig, generator):
        batch, mask = self._padded(model, [ids[0, :s] for s in scan.starts], cfg)
        out = model(batch, attention_mask=mask, use_cache=True, logits_to_keep=1)
        tokens, old_logp, _ = sample_continuations(model, out.cache, out.logits[:, -1], cfg, generator,
                                                   want_hidden=False)
        n, k = cfg.num_rollouts, cfg.rollout_len
        full, mask = self._padded(model, [torch.cat([ids[0, :s], tokens[i * n + j]]) for i, s in
                                          enumerate(scan.starts) for j in range(n)], cfg)
        h_pred = model(full, attention_mask=mask, output_hidden_states=True).hidden_states[-1][:, -k:]
        return tokens, old_logp, h_pred

    def score(self, model, ids: torch.Tensor, rollouts: Rollouts, cfg: RefineConfig
              ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(ids).logits
        n, k = cfg.num_rollouts, cfg.rollout_len
        rows = [torch.cat([ids[0, :s], rollouts.tokens[i * n + j]]) for i, s in enumerate(rollouts.starts)
                for j in range(n)]
        full, mask = self._padded(model, rows, cfg)
        out = model(full, attention_mask=mask)
        return logits, _rollout_logp(out.logits[:, -k - 1 : -1], rollouts.tokens, cfg)


def rollout_engine(cfg: RefineConfig) -> BranchEngine | RecomputeEngine:
    return BranchEngine() if cfg.rollout_mode == "branch" else RecomputeEngine()
