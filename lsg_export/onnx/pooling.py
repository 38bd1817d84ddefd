"""The `sentence_embedding` output of an encoder export: the last hidden state pooled over the real tokens
(attention_mask), then L2-normalised when the checkpoint's sentence-transformers pipeline has a Normalize
module, as sentence-transformers' Pooling and Normalize compute it. Which pooling: --pooling, by default
the checkpoint's (sentence_pipeline.py), none without one."""
import torch

from ..errors import LSGExportError
from ..sentence_pipeline import GRAPH_MODES, read_pipeline

SENTENCE_EMBEDDING = "sentence_embedding"
POOLING_CHOICES = (*GRAPH_MODES, "none")
POOLED_AXES = ("batch_size", None)


class SentencePooling(torch.nn.Module):
    """(last hidden state (batch, tokens, hidden), attention_mask (batch, tokens)) -> (batch, hidden)."""

    def __init__(self, mode, normalize):
        super().__init__()
        if mode not in GRAPH_MODES:
            raise ValueError(f"unknown pooling {mode!r}")
        self.mode, self.normalize = mode, normalize

    def forward(self, hidden, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "mean":
            # each real token weighted 1/count before the sum: the mean, and no float16 overflow of a long sum
            pooled = (hidden * (mask / mask.sum(1, keepdim=True).clamp(min=1e-9))).sum(1)
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
        else:  # cls: the first real token, as sentence-transformers picks it (position 0 with right padding)
            first = attention_mask.argmax(1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
            pooled = hidden.gather(1, first).squeeze(1)
        if self.normalize:  # torch.nn.functional.normalize: x / max(|x|, 1e-12)
            pooled = pooled / pooled.square().sum(-1, keepdim=True).sqrt().clamp(min=1e-12)
        return pooled


def choose_pooling(folder, task, pooling=None):
    """export.json's "pooling" ({"mode", "normalize"}) of an export of the converted `folder`, None for no
    sentence_embedding output. pooling: mean, cls, max or none; None: the checkpoint's sentence-transformers
    pooling (feature-extraction only), else none. Normalisation follows the checkpoint's Normalize module."""
    if pooling is not None and pooling not in POOLING_CHOICES:
        raise LSGExportError(f"unknown --pooling {pooling!r}; accepted: {', '.join(POOLING_CHOICES)}")
    if pooling == "none":
        return None
    if pooling is not None and task != "feature-extraction":
        raise LSGExportError(f"--pooling {pooling} pools the last hidden state: it needs --task feature-extraction "
                             f"(this export's task: {task})")
    pipeline = read_pipeline(folder)
    if pooling is None:
        if pipeline is None or task != "feature-extraction":
            return None
        pooling, why = pipeline.graph_pooling()
        if why:
            raise LSGExportError(f"{folder}: its sentence-transformers pipeline {why}: pass --pooling none (token "
                                 f"embeddings only) or --pooling {', '.join(GRAPH_MODES)} (that pooling alone)")
        if pooling is None:
            return None
    return {"mode": pooling, "normalize": bool(pipeline and pipeline.normalize)}
