"""What an ONNX export of a converted LSG folder looks like: task, input / output names, dummy inputs.

Names follow optimum's ONNX configs so that optimum.onnxruntime's ORTModelFor* classes load the folder:
inputs input_ids, attention_mask (+ token_type_ids for bert and albert), outputs last_hidden_state,
logits or start_logits / end_logits, with symbolic batch_size / sequence_length (/ num_choices) dims.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LSGExportError
from ..families import ALL_FAMILIES
from .pooling import POOLED_AXES, SENTENCE_EMBEDDING, SentencePooling


@dataclass(frozen=True)
class Task:
    name: str
    heads: tuple  # heads whose model computes this task directly
    outputs: tuple  # output names, optimum's
    ort_class: str  # optimum.onnxruntime class that loads the folder
    output_axes: tuple  # per output, symbolic names of its dims (None: a fixed dim)


SEQ_AXES = ("batch_size", "sequence_length")
TASKS = {t.name: t for t in (
    # feature-extraction can be computed from any head: the base model's last_hidden_state
    Task("feature-extraction", ("Model",), ("last_hidden_state",), "ORTModelForFeatureExtraction",
         (SEQ_AXES + (None,),)),
    # ForPreTraining exports as fill-mask: its prediction_logits become `logits` (the next-sentence /
    # sentence-order head is dropped), which is what ORTModelForMaskedLM expects
    Task("fill-mask", ("ForMaskedLM", "ForPreTraining"), ("logits",), "ORTModelForMaskedLM", (SEQ_AXES + (None,),)),
    Task("text-classification", ("ForSequenceClassification",), ("logits",), "ORTModelForSequenceClassification",
         (("batch_size", None),)),
    Task("token-classification", ("ForTokenClassification",), ("logits",), "ORTModelForTokenClassification",
         (SEQ_AXES + (None,),)),
    Task("question-answering", ("ForQuestionAnswering",), ("start_logits", "end_logits"),
         "ORTModelForQuestionAnswering", (SEQ_AXES, SEQ_AXES)),
    Task("multiple-choice", ("ForMultipleChoice",), ("logits",), "ORTModelForMultipleChoice",
         (("batch_size", "num_choices"),)),
)}
HEAD_TASKS = {head: task.name for task in TASKS.values() for head in task.heads}
NUM_CHOICES = 2  # choices of the dummy / validation inputs of multiple-choice


@dataclass
class ModelInfo:
    """A converted LSG folder, read from its config.json."""
    path: Path
    config: dict
    family: object
    head: str

    @property
    def max_length(self):
        return self.config.get("max_position_embeddings", 512) - self.family.position_offset

    @property
    def lsg_options(self):
        from ..modeling.lsg_base import LSG_OPTION_NAMES
        return {k: self.config.get(k) for k in LSG_OPTION_NAMES}


def read_model_folder(path):
    """ModelInfo of a folder `lsg-export convert` wrote; LSGExportError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise LSGExportError(f"{path}: no such folder")
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise LSGExportError(f"{path}: no config.json, not a converted LSG model folder") from None
    except (OSError, ValueError) as error:
        raise LSGExportError(f"{path}: cannot read config.json ({error.__class__.__name__})") from None
    family = ALL_FAMILIES.get(config.get("model_type"))
    architecture = (config.get("architectures") or [""])[0]
    head = family.head_of(architecture) if family else None
    if family is None or head is None or not architecture.startswith("LSG") or "block_size" not in config:
        raise LSGExportError(f"{path} is not a converted LSG model folder (config.json: model_type "
                             f"{config.get('model_type')!r}, architecture {architecture or None!r}); "
                             f"run `lsg-export convert` first")
    if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json",
                                                   "pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise LSGExportError(f"{path}: no weights (model.safetensors or pytorch_model.bin)")
    return ModelInfo(path, config, family, head)


def infer_task(info, task="auto"):
    """The task to export: the head's own, or `task` if the head can compute it."""
    if task in (None, "auto"):
        return HEAD_TASKS[info.head]
    if task not in TASKS:
        raise LSGExportError(f"unknown task {task!r}; accepted: auto, {', '.join(TASKS)}")
    if task != "feature-extraction" and info.head not in TASKS[task].heads:
        needs = ' or '.join(info.family.architecture(h) for h in TASKS[task].heads)
        raise LSGExportError(f"task {task} needs a {needs}"
                             f" checkpoint; {info.path} holds a {info.family.architecture(info.head)}"
                             f" (its tasks: {HEAD_TASKS[info.head]}, feature-extraction)")
    return task


def input_names(family):
    # bert and albert take token types (and add type 0 to the globals); the roberta family and
    # distilbert take none, as in optimum's ONNX configs
    names = ["input_ids", "attention_mask"]
    if family.token_type_in_globals:
        names.append("token_type_ids")
    return names


def input_axes(task):
    if task == "multiple-choice":
        return ("batch_size", "num_choices", "sequence_length")
    return SEQ_AXES


def output_names(task, pooling=None):
    """The graph's outputs: the task's, then sentence_embedding when it pools (`pooling`: export.json's)."""
    return list(TASKS[task].outputs) + [SENTENCE_EMBEDDING] * bool(pooling)


def output_axes(task, pooling=None):
    return list(TASKS[task].output_axes) + [POOLED_AXES] * bool(pooling)


class TaskModule(torch.nn.Module):
    """The model as the graph computes it: ONNX inputs in order, a tuple of outputs in `output_names` order.
    pooling (export.json's {"mode", "normalize"}): feature-extraction's sentence_embedding too."""

    def __init__(self, model, task, pooling=None):
        super().__init__()
        self.task = task
        self.pooling = SentencePooling(pooling["mode"], pooling["normalize"]) if pooling else None
        # feature-extraction of a head model: its base model
        if task == "feature-extraction" and hasattr(model, "base_model_prefix") and \
                isinstance(getattr(model, model.base_model_prefix, None), torch.nn.Module):
            model = getattr(model, model.base_model_prefix)
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs, return_dict=True)
        if self.task == "feature-extraction":
            if self.pooling is not None:
                return out.last_hidden_state, self.pooling(out.last_hidden_state, attention_mask)
            return (out.last_hidden_state,)
        if self.task == "question-answering":
            return out.start_logits, out.end_logits
        logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
        return (logits,)


def row_lengths(batch, length):
    """Real lengths of the rows of a validation batch: the first row full, the last padded."""
    lengths = [length] * batch
    if batch > 1 and length > 1:
        lengths[-1] = max(1, (2 * length) // 3)
    return lengths


def random_ids(config, shape, generator):
    """Token ids uniformly drawn from the vocabulary, never the padding id."""
    vocab = config.get("vocab_size", 100)
    pad = config.get("pad_token_id")
    pad = pad if isinstance(pad, int) and 0 <= pad < vocab else None
    ids = torch.randint(0, vocab - (pad is not None), shape, generator=generator)
    if pad is not None:
        ids = ids + (ids >= pad).long()
    return ids


def make_inputs(info, task, batch, length, lengths=None, generator=None, ids=None):
    """A batch of `length` tokens in ONNX input order, as int64 torch tensors.

    Row r has lengths[r] real tokens then padding (pad id, mask 0). `ids` (batch, length), when
    given, replaces the random tokens (real text). multiple-choice: (batch, NUM_CHOICES, length)."""
    generator = generator or torch.Generator().manual_seed(0)
    lengths = lengths or row_lengths(batch, length)
    shape = (batch, NUM_CHOICES, length) if task == "multiple-choice" else (batch, length)
    if ids is None:
        input_ids = random_ids(info.config, shape, generator)
    elif task == "multiple-choice":
        input_ids = ids.reshape(batch, 1, length).expand(shape).clone()
    else:
        input_ids = ids.reshape(shape).clone()
    mask = torch.zeros(shape, dtype=torch.long)
    for row, real in enumerate(lengths):
        mask[row, ..., :real] = 1
    pad = info.config.get("pad_token_id")
    input_ids = torch.where(mask.bool(), input_ids, torch.tensor(pad if isinstance(pad, int) else 0))
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if info.family.token_type_in_globals:
        types = torch.zeros(shape, dtype=torch.long)
        if info.config.get("type_vocab_size", 2) > 1:
            types[..., length // 2:] = 1  # a second segment, as a sentence pair
        inputs["token_type_ids"] = types * mask
    return inputs
