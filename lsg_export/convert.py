"""`lsg-export convert`: a 512-token checkpoint -> its LSG variant (reference format)."""
import json
import shutil
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError

from .compat import config_errors
from .errors import LSGExportError
from .families import ALL_FAMILIES, AUTO_CLASSES
from .folders import atomic_folder, check_output
from .modeling.lsg_attention import validate_lsg_options
from .modeling.lsg_base import LSG_DEFAULTS, LSG_OPTION_NAMES
from .quiet import quiet_transformers
from .sentence_pipeline import TOP_FILES as PIPELINE_FILES
from .sentence_pipeline import copy_pipeline, pipeline_folder, read_pipeline
from .sources import read_config_dict, resolve_source
from .weights import embedding_targets, initial_global_embeddings, tile_positions

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
MAX_LENGTH = 1 << 20  # a longer position table is a typo, not a model


@dataclass
class ConvertResult:
    path: Path
    model: torch.nn.Module
    tokenizer: object
    architecture: str
    source: str
    notes: list = field(default_factory=list)


def parse_model_kwargs(text):
    """--model-kwargs: a JSON object (the reference's single-quoted form is accepted too)."""
    if not text:
        return {}
    for candidate in (text, text.replace("'", '"')):
        try:
            value = json.loads(candidate)
            break
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise LSGExportError(f"--model-kwargs must be a JSON object, got {text!r}")
    return value


def default_output(display_name, max_sequence_length):
    return Path(f"lsg-{display_name}-{max_sequence_length}")


# what a conversion writes at the top of its folder besides the modeling code: weights of any sharding,
# configs, the tokenizer files of every family, the model card. --force replaces these (so that no file
# of a previous conversion is left beside the new ones) and keeps everything else, e.g. an onnx/ export
CONVERT_FILES = ("config.json", "generation_config.json", "README.md", "model.safetensors", "model-*-of-*.safetensors",
                 "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                 "sentencepiece.bpe.model", *PIPELINE_FILES)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "*.model")


def written_by_convert(entry, new_names=(), module_folders=()):
    """Whether `entry` of an output folder is a conversion's: a name written now, a file any conversion writes,
    or a module subfolder of the sentence-transformers pipeline there (`module_folders`, e.g. 1_Pooling)."""
    if entry.name in new_names or entry.is_dir() and entry.name in module_folders:
        return True
    modeling = {path.name for family in ALL_FAMILIES.values() for path in family.modeling_files()}
    return entry.is_file() and (entry.name in modeling or any(fnmatch(entry.name, p) for p in CONVERT_FILES))


def _listing(entries):
    return ", ".join(entry.name + ("/" if entry.is_dir() else "") for entry in entries)


def replacement_notice(output, replaced, kept):
    """What --force replaces in `output` and what it keeps, warning that kept ONNX exports are of the old weights."""
    message = f"--force: replacing what convert wrote in {output} ({_listing(replaced) or 'nothing'})"
    if not kept:
        return message
    exports = [entry for entry in kept if entry.is_dir() and next(entry.rglob("*.onnx"), None)]
    stale = f"; the ONNX exports in {_listing(exports)} are of the previous weights: export again" if exports else ""
    return f"{message}; keeping what it did not write ({_listing(kept)}){stale}"


def keep_foreign_entries(notice):
    """atomic_folder's carry_over for convert: keep what convert did not write, and say what happens first."""
    def carry_over(output, tmp):
        entries = sorted(output.iterdir())
        if not entries:  # an empty folder, allowed without --force: nothing to say
            return []
        new_names = {path.name for path in tmp.iterdir()}
        try:
            pipeline = read_pipeline(output)
        except LSGExportError:  # a corrupt modules.json: replaced, its subfolders kept
            pipeline = None
        module_folders = pipeline.folders if pipeline else ()
        kept = [entry for entry in entries if not written_by_convert(entry, new_names, module_folders)]
        notice(replacement_notice(output, [entry for entry in entries if entry not in kept], kept))
        return [entry.name for entry in kept]
    return carry_over


def _choose_architecture(family, config_dict, architecture):
    candidates = [architecture] if architecture else list(config_dict.get("architectures") or [])[:1]
    name = candidates[0] if candidates else family.architecture(family.default_head)
    head = family.head_of(name)
    if head is None:
        accepted = ", ".join(family.architecture(h) for h in family.heads)
        raise LSGExportError(f"architecture {name} is not available for {family.model_type}; accepted: {accepted}")
    return head


def _special_id(tokenizer, config, kinds):
    """The first `<kind>_token_id` the tokenizer, then the config, sets: (id, "tokenizer's bos") or (None, None)."""
    for owner, label in ((tokenizer, "tokenizer"), (config, "config")):
        for kind in kinds:
            token_id = getattr(owner, f"{kind}_token_id", None) if owner is not None else None
            if token_id is not None:
                return token_id, f"{label}'s {kind}"
    return None, None


def _global_token_ids(tokenizer, config, rows, random_init):
    """(bos id, mask id) the global embeddings start from, each a row of the `rows`-row word table.
    random_init uses no mask token, and without a bos/cls token it draws global 0 too, so it needs neither."""
    bos, bos_origin = _special_id(tokenizer, config, ("bos", "cls"))
    mask, mask_origin = (None, None) if random_init else _special_id(tokenizer, config, ("mask",))
    if not random_init and (bos is None or mask is None):
        missing = " and ".join(name for name, token_id in (("bos/cls", bos), ("mask", mask)) if token_id is None)
        raise LSGExportError(f"cannot find the {missing} token id to initialise the global tokens (neither the "
                             f"tokenizer nor the config names one): pass --random-global-init to draw them from "
                             f"a normal fitted to the word embeddings")
    # distilled BART checkpoints: the tokenizer's <mask> id is vocab_size, one past the table
    for token_id, origin, way_out in (
            (bos, bos_origin, "inputs start with that token: fix the checkpoint's special tokens"),
            (mask, mask_origin, "pass --random-global-init, which does not use the mask token")):
        if token_id is not None and not 0 <= token_id < rows:
            raise LSGExportError(f"the {origin} token id {token_id} is outside the word embedding table ({rows} "
                                 f"rows, ids 0..{rows - 1}): the tokenizer does not match the checkpoint; {way_out}")
    return bos, mask


def _load_tokenizer(source):
    from transformers import AutoTokenizer
    # transformers 5 builds a folder without tokenizer files a tokenizer of special tokens alone (mbart: its
    # language codes too), whose ids would then seed the global tokens: such a folder has none
    if Path(source).is_dir() and not any(fnmatch(p.name, pattern) for p in Path(source).iterdir()
                                         for pattern in TOKENIZER_FILES):
        return None
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, AttributeError):  # camembert / xlm-roberta without files: AttributeError
        return None
    return tokenizer if len(tokenizer) > len(tokenizer.all_special_tokens) else None  # the same from the hub


def convert(model=None, output=None, *, max_sequence_length=4096, architecture=None, block_size=None,
            sparse_block_size=None, sparsity_factor=None, sparsity_type=None, num_global_tokens=None,
            mask_first_token=None, pool_with_global=None, lsh_num_pre_rounds=None, model_kwargs=None,
            random_global_init=False, global_positional_stride=64, keep_first_global_token=False,
            resize_lsg=False, seed=123, force=False, status=None, notice=None):
    """Convert `model` (folder, hub id, or None for the bundled MiniLM) into an LSG folder.

    LSG options left as None keep the checkpoint's (an LSG checkpoint) or the defaults.
    `status(message)` is called before each step. force: replace what a conversion wrote in a non-empty
    `output`, keep the rest; `notice(message)` (default: print to stderr) says which, before replacing.
    Returns a ConvertResult."""
    status = status or (lambda message: None)
    notice = notice or (lambda message: print(message, file=sys.stderr))
    source, display = resolve_source(model)
    config_dict = read_config_dict(source)
    model_type = config_dict.get("model_type")
    family = ALL_FAMILIES.get(model_type)
    if family is None:
        raise LSGExportError(f"model type {model_type!r} is not supported; accepted: {', '.join(ALL_FAMILIES)}")
    head = _choose_architecture(family, config_dict, architecture)
    original_architecture = (list(config_dict.get("architectures") or []) or [""])[0]
    is_lsg = config_dict.get("base_model_prefix") == "lsg" or original_architecture.startswith("LSG")

    options = {k: config_dict.get(k, LSG_DEFAULTS[k]) if is_lsg else LSG_DEFAULTS[k] for k in LSG_OPTION_NAMES}
    given = dict(block_size=block_size, sparse_block_size=sparse_block_size, sparsity_factor=sparsity_factor,
                 sparsity_type=sparsity_type, num_global_tokens=num_global_tokens, mask_first_token=mask_first_token,
                 pool_with_global=pool_with_global, lsh_num_pre_rounds=lsh_num_pre_rounds)
    options.update({k: v for k, v in given.items() if v is not None})
    extra = parse_model_kwargs(model_kwargs) if isinstance(model_kwargs, (str, type(None))) else dict(model_kwargs)
    options.update({k: extra.pop(k) for k in list(extra) if k in LSG_DEFAULTS})
    try:
        options["sparsity_type"] = validate_lsg_options(
            options["block_size"], options["sparse_block_size"], options["sparsity_factor"],
            options["sparsity_type"], options["num_global_tokens"])
    except ValueError as error:
        raise LSGExportError(str(error)) from None
    if global_positional_stride < 1:
        raise LSGExportError(f"--global-positional-stride must be positive, got {global_positional_stride}")

    positions = config_dict.get("max_position_embeddings", 512) - family.position_offset
    if max_sequence_length is None or max_sequence_length < 1:
        raise LSGExportError(f"--max-sequence-length must be positive, got {max_sequence_length}")
    if max_sequence_length > MAX_LENGTH:
        raise LSGExportError(f"--max-sequence-length {max_sequence_length} is above {MAX_LENGTH}")
    if max_sequence_length < positions and not is_lsg:
        raise LSGExportError(f"--max-sequence-length {max_sequence_length} is below the model's length ({positions})")
    local = Path(source).is_dir()
    if local and not any((Path(source) / name).is_file() for name in WEIGHT_FILES):
        raise LSGExportError(f"{source}: no weights ({' or '.join(WEIGHT_FILES[::2])})")
    output = check_output(output or default_output(display, max_sequence_length), force)

    status(f"loading {display} ({family.model_type}, {family.architecture(head)})")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config_dict = {k: v for k, v in config_dict.items()
                   if k not in ("auto_map", "architectures", "_name_or_path", "transformers_version", "model_type")}
    config_dict.update(options, **extra)
    try:
        config = family.config_class()(**config_dict)
    except config_errors() as error:
        raise LSGExportError(f"invalid configuration: {' '.join(str(error).split())[:300]}") from None
    lsg_class = family.model_class(head)
    try:
        with quiet_transformers():
            lsg_model = lsg_class.from_pretrained(source, config=config)
    except (OSError, RuntimeError, SafetensorError, *config_errors()) as error:  # corrupt file, bad kwargs
        raise LSGExportError(f"{source}: cannot load the weights ({str(error).splitlines()[0][:200]})") from None
    tokenizer = _load_tokenizer(source)

    status("extending positions and initialising global tokens")
    state = lsg_model.state_dict()
    targets = embedding_targets(lsg_model, family)
    if targets.global_key and not (is_lsg and resize_lsg):
        bos_id, mask_id = _global_token_ids(tokenizer, config, targets.word.shape[0], random_global_init)
        try:
            glob = initial_global_embeddings(targets.word, targets.positions, bos_id, mask_id,
                                             global_positional_stride, targets.token_type, random_global_init,
                                             generator)
        except ValueError as error:
            raise LSGExportError(str(error)) from None
        key = targets.global_key
        if keep_first_global_token and is_lsg:
            glob[0] = state[key][0]
        state[key] = glob.to(state[key].dtype)
    for key, offset in targets.tiled.items():
        state[key] = tile_positions(state[key], max_sequence_length, offset)

    config.max_position_embeddings = max_sequence_length + family.position_offset
    config.architectures = [family.class_name(head)]
    config.auto_map = family.auto_map()
    config._name_or_path = str(output)
    with quiet_transformers():
        lsg_model = lsg_class(config)
    state.update({key: lsg_model.state_dict()[key] for key in targets.regenerated})  # sinusoidal, new length
    lsg_model.load_state_dict(state)
    lsg_model.eval()

    pipeline_source = pipeline_folder(source)  # sentence-transformers' modules.json, pooling ...: carried along
    status(f"writing {output}")
    with atomic_folder(output, force, keep_foreign_entries(notice)) as tmp:
        with quiet_transformers():  # transformers 5: a 'Writing model shards' bar on stderr
            lsg_model.save_pretrained(tmp, safe_serialization=True)
        for path in family.modeling_files():
            shutil.copy(path, tmp / path.name)
        if tokenizer is not None:
            tokenizer.model_max_length = max_sequence_length
            tokenizer.init_kwargs["model_max_length"] = max_sequence_length
            tokenizer.save_pretrained(tmp)
        pipeline = copy_pipeline(pipeline_source, tmp, max_sequence_length) if pipeline_source else None
        (tmp / "README.md").write_text(model_card(display, source, family, head, config, max_sequence_length,
                                                  pipeline is not None))
    return ConvertResult(output, lsg_model, tokenizer, family.class_name(head), source)


def model_card(display, source, family, head, config, length, sentence_transformers=False):
    options = "\n".join(f"| `{k}` | `{getattr(config, k)}` |" for k in LSG_OPTION_NAMES)
    usage = f"""
A sentence-transformers model too (its pooling carried, `max_seq_length` {length}):

```python
from sentence_transformers import SentenceTransformer
embeddings = SentenceTransformer("PATH", trust_remote_code=True).encode(["a long document ..."])
```
""" if sentence_transformers else ""
    return f"""---
library_name: {"sentence-transformers" if sentence_transformers else "transformers"}
tags: [lsg, long-context, lsg-export]
---
# LSG {display} ({length} tokens)

`{display}` ({family.model_type}, from `{source}`) converted by `lsg-export convert` to Local-Sparse-Global
attention: each block of {config.block_size} queries sees its 3 neighbouring blocks, {config.num_global_tokens}
global token(s) and 2 x {config.sparse_block_size} compressed tokens ({config.sparsity_type}, factor
{config.sparsity_factor}). Positions are tiled up to {length}.

```python
from transformers import {AUTO_CLASSES[head]}, AutoTokenizer
model = {AUTO_CLASSES[head]}.from_pretrained("PATH", trust_remote_code=True)
```
{usage}
| option | value |
|---|---|
{options}

Architecture: `{family.class_name(head)}`. The global embeddings are new weights: fine-tune before relying on
the model for long inputs.
"""

