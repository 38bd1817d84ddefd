"""Weight surgery of the conversion: tiled positions and the global embeddings' initialisation."""
from dataclasses import dataclass, field

import torch


def tile_positions(table, length, offset=0):
    """Keep the `offset` leading rows, repeat the others until there are `length` of them."""
    body = table[offset:]
    repeats = length // body.shape[0] + 1
    return torch.cat([table[:offset], body.repeat(repeats, 1)[:length]], dim=0)


def order_positions(positions, stride, generator=None):
    """512 rows from a position table (without offset rows), reordered for the global tokens.

    A table whose length n is not a multiple of 512 is cut to one, or below 512 padded with normal
    draws of its rows' mean and std; every f-th row is kept (f = n/512); with s = stride/f and
    g = 512/s, global k gets reduced row (k mod g)*s + k//g."""
    n, d = positions.shape
    if n % 512:
        if n > 512:
            positions = positions[: 512 * (n // 512)]
        else:
            mean = positions.mean(0, keepdim=True).expand(512 - n, -1)
            std = positions.std(0, keepdim=True).expand(512 - n, -1)
            positions = torch.cat([positions, torch.normal(mean, std, generator=generator)], dim=0)
        n = positions.shape[0]
    factor = n // 512
    step = stride // factor
    if step < 1 or 512 % step:
        raise ValueError(f"global positional stride {stride} does not fit a {n}-row position table")
    positions = positions.reshape(-1, factor, d)[:, 0]
    return positions.reshape(-1, step, d).transpose(0, 1).reshape(-1, d)


def fitted_normal_draws(rows, count, generator=None):
    """`count` draws from the normal whose mean and covariance are those of `rows` (one per row)."""
    mean, cov = rows.mean(0), torch.cov(rows.T.double())
    cov = cov + torch.eye(cov.shape[0], dtype=cov.dtype) * 1e-6  # keep it positive definite
    draws = torch.linalg.cholesky(cov) @ torch.randn(cov.shape[0], count, generator=generator, dtype=cov.dtype)
    return (mean.double().unsqueeze(0) + draws.T).to(rows.dtype)


def initial_global_embeddings(word, positions, bos_id, mask_id, stride, token_type=None,
                              random_init=False, generator=None):
    """The 512 global embeddings of the reference converter.

    Default: reordered positions + the bos (else cls) word embedding for global 0 and the mask
    token's for the others. random_init: draws from a normal fitted to the word embeddings (global 0
    is the bos embedding when there is a bos_id, as in the reference, else a draw too), plus the
    reordered positions. bert/albert add token type 0 (twice to the random init's bos row, as the reference)."""
    positions = order_positions(positions.detach().clone(), stride, generator)
    word = word.detach()
    if random_init:
        glob = fitted_normal_draws(word, 512, generator)
        if token_type is not None:
            positions = positions + token_type
        if bos_id is not None:
            glob[0] = word[bos_id] + (token_type if token_type is not None else 0)
        return glob + positions
    positions[0] += word[bos_id]
    positions[1:] += word[mask_id].unsqueeze(0)
    if token_type is not None:
        positions += token_type.unsqueeze(0)
    return positions


@dataclass
class EmbeddingTargets:
    """Where the conversion writes in a model's state dict.

    word / positions: the tables the global embeddings are initialised from (positions without
    offset rows); global_key: the global embeddings (None: the model has no LSG encoder, e.g. a
    decoder alone); tiled: {key: offset rows} of the position tables to tile; regenerated: keys of
    sinusoidal tables the model rebuilds at the new length."""
    word: torch.Tensor = None
    positions: torch.Tensor = None
    global_key: str = None
    token_type: torch.Tensor = None
    tiled: dict = field(default_factory=dict)
    regenerated: list = field(default_factory=list)


def embedding_targets(model, family):
    """EmbeddingTargets of an LSG model of `family` (encoder or encoder-decoder)."""
    if not family.seq2seq:
        prefix = model.base_model_prefix
        base = getattr(model, prefix, model)
        prefix = "" if base is model else prefix + "."
        embeddings = base.embeddings
        token_type = embeddings.token_type_embeddings.weight[0].detach() if family.token_type_in_globals else None
        return EmbeddingTargets(
            embeddings.word_embeddings.weight.detach(),
            embeddings.position_embeddings.weight.detach()[family.position_offset:],
            prefix + "embeddings.global_embeddings.weight", token_type,
            {prefix + "embeddings.position_embeddings.weight": family.position_offset})
    # bart, mbart, pegasus: every `embed_positions` (encoder and decoder) changes; the globals are
    # initialised from the shared (unscaled) token embeddings and the encoder's table
    targets = EmbeddingTargets()
    for name, module in model.named_modules():
        if name.endswith("embed_positions"):
            if family.sinusoidal:
                targets.regenerated.append(name + ".weight")
            else:
                targets.tiled[name + ".weight"] = family.table_offset
        if hasattr(module, "global_embeddings"):
            targets.global_key = (name + "." if name else "") + "global_embeddings.weight"
            targets.word = model.get_input_embeddings().weight.detach()
            targets.positions = module.embed_positions.weight.detach()[family.table_offset:]
    return targets
