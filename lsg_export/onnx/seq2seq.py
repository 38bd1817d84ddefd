"""The encoder-decoder layout (bart, mbart, pegasus): optimum's seq2seq layout, its graph parts for
pipeline.py, the merged decoder, the validation with generation, and loading with optimum.

OUT holds what `optimum.onnxruntime.ORTModelForSeq2SeqLM.from_pretrained(OUT)` loads:

  encoder_model.onnx            input_ids, attention_mask -> last_hidden_state (G + t rows when the
                                globals are passed to the decoder), LSG attention through the chosen
                                attention kind, every batch size and length 1..seq;
  decoder_model.onnx            input_ids, encoder_attention_mask, encoder_hidden_states -> logits,
                                present.{i}.decoder.key/value, present.{i}.encoder.key/value;
  decoder_with_past_model.onnx  input_ids, encoder_attention_mask, past_key_values.{i}.{decoder,encoder}
                                .{key,value} -> logits, present.{i}.decoder.key/value;
  decoder_model_merged.onnx     (--merge-decoders, the default) both decoders in one graph, as optimum's
                                exporter writes it (optimum.onnx.merge_decoders): an If node on the extra
                                bool input use_cache_branch; the past inputs are given on the first step too
                                (empty, as ORTModelForSeq2SeqLM feeds them). optimum loads it when present.

The decoder is dense: the family's own, exported with torch.export like the encoder. ORTModelForSeq2SeqLM
gives the decoder the caller's attention mask (t columns); the graphs put the G ones in front
themselves, reading the mask at [j - G] for encoder row j, so that no shape relation between the mask
and the encoder output is baked in.

--optimize, --fp16 and --quantize apply to each graph before the merge (optimum refuses to optimise a
merged graph): the encoder as the encoders' graphs (model_type bert, no attention fusion), the dense
decoders with onnxruntime.transformers' model_type bart.
"""
import inspect
from pathlib import Path

import numpy as np
import torch

from ..compat import has_optimum, require_optimum
from ..errors import LSGExportError
from ..graph_list import SEQ2SEQ_FILES, find_graph, graph_list
from ..quiet import quiet_transformers
from ..sources import read_export_json
from .parts import GraphPart, example_length, weight_bytes
from .tasks import make_inputs
from .ties import SelectionProbe
from .validate import Comparison, ValidationReport, compare_output, length_status, make_session

ENCODER_FILE = SEQ2SEQ_FILES["encoder"]
DECODER_FILE = SEQ2SEQ_FILES["decoder"]
DECODER_WITH_PAST_FILE = SEQ2SEQ_FILES["decoder_with_past"]
PART_FILES = (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE)
MERGED_FILE = SEQ2SEQ_FILES["decoder_merged"]


class EncoderModule(torch.nn.Module):
    """The LSG encoder as the encoder graph computes it."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return (self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state,)


def decoder_names(num_layers, with_past):
    """(input names, output names) of a decoder graph, optimum's."""
    inputs = ["input_ids", "encoder_attention_mask"]
    if with_past:
        inputs += [f"past_key_values.{i}.{side}.{kind}" for i in range(num_layers)
                   for side in ("decoder", "encoder") for kind in ("key", "value")]
    else:
        inputs.append("encoder_hidden_states")
    sides = ("decoder",) if with_past else ("decoder", "encoder")
    outputs = ["logits"] + [f"present.{i}.{side}.{kind}" for i in range(num_layers) for side in sides
                            for kind in ("key", "value")]
    return inputs, outputs


def identifier(name):
    """An ONNX input name as a Python argument name (torch.export names the graph inputs after them)."""
    return name.replace(".", "_")


class DecoderModule(torch.nn.Module):
    """One decoder step (or the first, without past) of an LSG ForConditionalGeneration model.

    Called with the inputs of `decoder_names` in order: (input_ids, encoder_attention_mask,
    encoder_hidden_states) or (input_ids, encoder_attention_mask, *past (4 per layer)); returns
    (logits, *presents). `forward` carries a signature naming every input, as torch.export needs."""

    def __init__(self, model, with_past):
        super().__init__()
        self.model = model
        self.with_past = with_past
        config = model.config
        self.num_globals = config.num_global_tokens if config.pass_global_tokens_to_decoder else 0
        names = [identifier(n) for n in decoder_names(config.decoder_layers, with_past)[0]]

        def forward(*args):
            return self.step(*args)

        forward.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
        self.forward = forward

    def cross_mask(self, mask, rows):
        """The (n, rows) mask over the encoder output: 1 on the globals, then the caller's mask."""
        j = torch.arange(rows, device=mask.device) - self.num_globals
        picked = mask.gather(1, j.clamp(min=0).unsqueeze(0).expand(mask.shape[0], -1))
        return torch.where(j.unsqueeze(0) < 0, torch.ones_like(picked), picked)

    def step(self, input_ids, encoder_attention_mask, *rest):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        from ..compat import cache_argument, cache_from_layers, cache_layers
        if self.with_past:
            layers = tuple(tuple(rest[i:i + 4]) for i in range(0, len(rest), 4))
            cache = cache_from_layers(layers)
            key = layers[0][2]  # cross keys are cached: the decoder reads only the shape of the states
            encoder_hidden_states = key.transpose(1, 2).reshape(key.shape[0], key.shape[2], -1)
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            encoder_hidden_states = rest[0] * 1.0  # a fresh tensor: no stride guards on the input
        mask = self.cross_mask(encoder_attention_mask, encoder_hidden_states.shape[1])
        # the decoder's own mask, explicit: without one, bart's causal mask gets a column too many when traced
        seen = rest[0].shape[2] + input_ids.shape[1] if self.with_past else input_ids.shape[1]
        own_mask = torch.ones(input_ids.shape[0], seen, dtype=torch.long, device=input_ids.device)
        decoder = self.model.get_decoder()
        out = decoder(input_ids=input_ids, attention_mask=own_mask, encoder_hidden_states=encoder_hidden_states,
                      encoder_attention_mask=mask, use_cache=True, return_dict=True, **{cache_argument(decoder): cache})
        # the ForConditionalGeneration head of bart, mbart and pegasus
        hidden = out.last_hidden_state
        logits = self.model.lm_head(hidden) + self.model.final_logits_bias.to(hidden.dtype)
        presents = []
        for layer in cache_layers(out[cache_argument(decoder)]):
            presents += list(layer[:2] if self.with_past else layer)
        return (logits, *presents)


ENC_AXES = ("batch_size", "encoder_sequence_length")
HIDDEN_AXES = ("batch_size", "encoder_hidden_length", None)  # G + t rows when the globals are passed on
TASK = "text2text-generation"
GENERATE_TOKENS = 8  # new tokens of the greedy generation the validation compares
DECODER_TOKENS = 5  # decoder input of the logits comparison


def check_head(info, task):
    if info.head != "ForConditionalGeneration" or task not in (None, "auto", TASK):
        raise LSGExportError(
            f"encoder-decoders export as {TASK} (optimum's ORTModelForSeq2SeqLM layout) from a "
            f"{info.family.architecture('ForConditionalGeneration')} checkpoint; {info.path} holds a "
            f"{info.family.architecture(info.head)}" + ("" if task in (None, "auto", TASK) else f", --task {task}"))


def load_model(info, seq):
    """The PyTorch model (package classes, float32, eager attention), its encoder positions cut to --seq."""
    try:
        with quiet_transformers():
            model = info.family.model_class(info.head).from_pretrained(
                str(info.path), dtype=torch.float32, attn_implementation="eager")
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise LSGExportError(f"{info.path}: cannot load the model ({str(error).splitlines()[0][:200]})") from None
    # longer inputs then fail in the graph (the position lookup) instead of running unvalidated
    table = model.get_encoder().embed_positions
    rows = seq + info.family.table_offset
    if table.weight.shape[0] > rows:
        table.weight = torch.nn.Parameter(table.weight.data[:rows].clone(), requires_grad=False)
        table.num_embeddings = rows
    return model.eval()


def encoder_inputs(info, batch, length, generator=None, ids=None):
    inputs = make_inputs(info, "feature-extraction", batch, length, generator=generator, ids=ids)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def graph_parts(model, info, seq):
    """The encoder, the decoder and the decoder with past as graph parts of `model` (--seq `seq`): traced on
    a 2-row example; the decoder with past on the presents of the decoder's step."""
    config = model.config
    example = encoder_inputs(info, 2, example_length(info.config["block_size"], seq))
    with torch.no_grad():
        hidden = model.get_encoder()(**example).last_hidden_state
        decoder_ids = torch.full((2, 3), config.decoder_start_token_id, dtype=torch.long)
        first = DecoderModule(model, False)(decoder_ids, example["attention_mask"], hidden)
    doc = f"LSG {info.family.class_name(info.head)} ({TASK}) by lsg-export"
    decoder_bytes = weight_bytes(model.get_decoder(), model.lm_head)
    parts = [GraphPart("encoder", ENCODER_FILE, EncoderModule(model).eval(), example, ["input_ids", "attention_mask"],
                       ["last_hidden_state"], {"input_ids": ENC_AXES, "attention_mask": ENC_AXES}, [HIDDEN_AXES],
                       optimizer_config={"num_attention_heads": config.encoder_attention_heads,
                                         "hidden_size": config.d_model},
                       weight_bytes=weight_bytes(model.get_encoder()), doc=doc)]
    for with_past, name in ((False, "decoder"), (True, "decoder_with_past")):
        names, outputs = decoder_names(config.decoder_layers, with_past)
        values = [decoder_ids[:, :1] if with_past else decoder_ids, example["attention_mask"]]
        values += list(first[1:]) if with_past else [hidden]  # presents of step 1: the past of step 2
        past_dims = {identifier(n): (0, 2) for n in names if n.startswith("past_key_values")}
        decoder_axis = "past_decoder_sequence_length" if with_past else "decoder_sequence_length"
        input_axes = {"input_ids": ("batch_size", "decoder_sequence_length"), "encoder_attention_mask": ENC_AXES,
                      "encoder_hidden_states": HIDDEN_AXES}
        input_axes.update({n: ("batch_size", None, "past_decoder_sequence_length" if ".decoder." in n
                               else "encoder_hidden_length", None) for n in names if n.startswith("past")})
        output_axes = [("batch_size", "decoder_sequence_length", None)] + [
            ("batch_size", None, "encoder_hidden_length" if ".encoder." in n else
             (decoder_axis + " + 1" if with_past else decoder_axis), None) for n in outputs[1:]]
        parts.append(GraphPart(name, SEQ2SEQ_FILES[name], DecoderModule(model, with_past).eval(),
                               dict(zip(map(identifier, names), values)), names, outputs, input_axes, output_axes,
                               optimizer_config={"num_attention_heads": config.decoder_attention_heads,
                                                 "hidden_size": config.d_model},
                               model_type="bart", dynamic_dims={"encoder_hidden_states": (0, 1), **past_dims},
                               weight_bytes=decoder_bytes, doc=doc))
    return parts


def merge_decoder_graphs(folder):
    """decoder_model_merged.onnx from the two decoders, by optimum's merge (strict=False: the decoder with
    past has no encoder presents; the merge gives its branch placeholders, which optimum never reads)."""
    require_optimum("the merged decoder (--merge-decoders)")
    from optimum.onnx import merge_decoders

    from .export import quiet_exporter
    try:
        with quiet_exporter():
            merge_decoders(folder / DECODER_FILE, folder / DECODER_WITH_PAST_FILE, save_path=folder / MERGED_FILE,
                           strict=False)
    except Exception as error:
        raise LSGExportError(f"merging the decoders failed ({error.__class__.__name__}: "
                             f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None


class Sessions:
    """ONNX Runtime sessions of the graphs of a folder (export.json's graph list): the encoder, the decoder,
    the decoder with past, and the merged decoder when the list has one."""

    def __init__(self, folder, graphs, device, kind):
        def session(name):
            graph = find_graph(graphs, name)
            return make_session(Path(folder) / graph.file, device, kind) if graph is not None else None
        self.encoder, self.decoder, self.decoder_with_past, self.merged = (
            session(name) for name in ("encoder", "decoder", "decoder_with_past", "decoder_merged"))
        self.past_names = [i.name for i in self.decoder_with_past.get_inputs() if i.name.startswith("past")]

    def parts(self):
        return {"encoder": self.encoder, "decoder": self.decoder, "decoder_with_past": self.decoder_with_past,
                "merged": self.merged}

    def run_merged(self, decoder_ids, mask, hidden, config):
        """The merged graph's two branches: (logits of decoder_ids[:, :-1] without past, logits of the last
        id with the presents of the first as past). The first step gets empty past tensors, as optimum's."""
        heads = config.decoder_attention_heads
        empty = np.zeros((hidden.shape[0], heads, 0, config.d_model // heads), dtype=np.float32)
        common = {"encoder_attention_mask": mask, "encoder_hidden_states": hidden}
        first = self.merged.run(None, {**common, "input_ids": decoder_ids[:, :-1],
                                       **{name: empty for name in self.past_names},
                                       "use_cache_branch": np.array([False])})
        step = self.merged.run(None, {**common, "input_ids": decoder_ids[:, -1:],
                                      **dict(zip(self.past_names, first[1:])), "use_cache_branch": np.array([True])})
        return first[0], step[0]


def compare_seq2seq(sessions, model, info, lengths, batch_size, atol, enforced, ids=None, inputs_label="random ids",
                    progress=None, ort_model=None, new_tokens=GENERATE_TOKENS):
    """Per length (batch_size rows, the last padded): encoder output on the real rows (globals + real
    tokens), decoder logits without and with past (and from the merged graph's two branches when
    `sessions` has it), and greedy generation from ORTModelForSeq2SeqLM (`ort_model`) against PyTorch's
    tokens. Near-ties of the encoder's norm selection are judged as in validate.ValidationReport."""
    report = ValidationReport(atol, enforced, batch_size, list(lengths), inputs_label)
    generator = torch.Generator().manual_seed(0)
    globals_ = info.config["num_global_tokens"] if info.config.get("pass_global_tokens_to_decoder", True) else 0
    for length in lengths:
        if progress:
            progress(length_status(lengths, length))
        chunk = ids.rows(batch_size, length) if ids is not None else None
        inputs = encoder_inputs(info, batch_size, length, generator=generator, ids=chunk)
        feeds = {k: v.numpy() for k, v in inputs.items()}
        decoder_ids = torch.randint(5, model.config.vocab_size, (batch_size, DECODER_TOKENS), generator=generator)
        decoder_ids[:, 0] = model.config.decoder_start_token_id
        try:
            hidden = sessions.encoder.run(None, feeds)[0]
            first = sessions.decoder.run(None, {"input_ids": decoder_ids[:, :-1].numpy(),
                                                "encoder_hidden_states": hidden,
                                                "encoder_attention_mask": feeds["attention_mask"]})
            step = sessions.decoder_with_past.run(None, {"input_ids": decoder_ids[:, -1:].numpy(),
                                                         "encoder_attention_mask": feeds["attention_mask"],
                                                         **dict(zip(sessions.past_names, first[1:]))})
            merged = (sessions.run_merged(decoder_ids.numpy(), feeds["attention_mask"], hidden, model.config)
                      if sessions.merged is not None else ())
        except Exception as error:
            raise LSGExportError(f"ONNX Runtime failed at length {length} ({str(error).splitlines()[0][:300]})") \
                from None
        got_tokens = generate(ort_model, inputs, new_tokens) if ort_model is not None else None
        rows_mask = torch.nn.functional.pad(inputs["attention_mask"], (globals_, 0), value=1).bool().numpy()
        outputs = [("last_hidden_state", hidden), ("logits", first[0]), ("logits (past)", step[0])]
        if merged:
            outputs += [("logits (merged)", merged[0]), ("logits (merged, past)", merged[1])]

        def run(swaps=()):
            with torch.no_grad(), SelectionProbe(model, swaps) as probe:
                expected = model.get_encoder()(**inputs).last_hidden_state.numpy()
                logits = model(encoder_outputs=(torch.from_numpy(expected),), attention_mask=inputs["attention_mask"],
                               decoder_input_ids=decoder_ids).logits.numpy()
                tokens = generate(model, inputs, new_tokens) if got_tokens is not None else None
            references = {"last_hidden_state": expected, "logits": logits[:, :-1], "logits (past)": logits[:, -1:],
                          "logits (merged)": logits[:, :-1], "logits (merged, past)": logits[:, -1:]}
            rows = [compare_output(length, name, references[name], got, rows_mask if name == "last_hidden_state"
                                   else None, atol, enforced) for name, got in outputs]
            if tokens is not None:
                rows.append(compare_tokens(length, tokens, got_tokens, enforced))
            return rows, probe

        rows, probe = run()
        report.add_length(length, rows, probe.ties, run)
    return report


def generation_settings(new_tokens, num_beams=1):
    """generate() settings of the validation and the bench: greedy (num_beams 1) or beam search, exactly
    new_tokens tokens (no early end at the end-of-sequence token), one sequence per input."""
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=num_beams, do_sample=False)


def generate(model, inputs, new_tokens):
    """Greedy tokens of a PyTorch model, an ORTModelForSeq2SeqLM or an OrtSeq2SeqGenerator."""
    with torch.no_grad(), quiet_transformers():
        return model.generate(**inputs, **generation_settings(new_tokens))


def compare_tokens(length, expected, got, enforced):
    """Greedy tokens of ORT vs PyTorch: a row whose max_abs_diff counts differing tokens."""
    if expected.shape != got.shape:
        return Comparison(length, "greedy tokens", float("inf"), 1.0, 0.0, not enforced)
    differ = (expected != got).float()
    return Comparison(length, "greedy tokens", float(differ.sum()), float(differ.mean()),
                      float(1 - differ.mean()), bool(differ.sum() == 0) or not enforced)


def load_seq2seq_model(folder, provider="CPUExecutionProvider", session_options=None, use_merged=None, **kwargs):
    """optimum's ORTModelForSeq2SeqLM of an export folder, the custom-op library registered when the
    encoder graph needs it (export.json "custom_ops"). use_merged: optimum's (None: the merged decoder
    when export.json says the folder has one). kwargs go to from_pretrained."""
    require_optimum("ORTModelForSeq2SeqLM (load_ort_model)")
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    meta = read_export_json(folder)
    if use_merged is None:  # said, not left to optimum, which logs a line when it looks for a missing file
        use_merged = find_graph(graph_list(meta), "decoder_merged") is not None
    if meta.get("custom_ops"):
        from ..ops.session import session_options_with_ops
        session_options = session_options_with_ops(session_options)
    with quiet_transformers():
        return ORTModelForSeq2SeqLM.from_pretrained(str(folder), provider=provider, session_options=session_options,
                                                    use_merged=use_merged, **kwargs)


class Seq2Seq:
    """optimum's seq2seq layout: the graph parts encoder, decoder and decoder_with_past, then the merged decoder
    made from the two decoders (merged: --merge-decoders); validated together, length by length, with greedy
    generation by ORTModelForSeq2SeqLM against PyTorch's."""
    label = "encoder-decoder"
    external_data = False  # each graph one file: optimum's merge and loading of external data are not covered
    side_files = ("generation_config.json",)  # generate() of ORT and PyTorch: the same settings
    task = TASK

    def __init__(self, info, merged):
        self.info, self.merged = info, merged

    @classmethod
    def serves(cls, family):
        return family.seq2seq

    @classmethod
    def reads(cls, graphs):
        return find_graph(graphs, "encoder") is not None

    @classmethod
    def for_export(cls, info, task, merge_decoders, pooling=None):
        check_head(info, task)
        if pooling not in (None, "none"):
            raise LSGExportError(f"--pooling is for encoder exports (feature-extraction); {info.path} holds a "
                                 f"{info.family.class_name(info.head)}")
        merged = has_optimum() if merge_decoders is None else bool(merge_decoders)  # the merge is optimum's
        if merged:
            require_optimum("the merged decoder (--merge-decoders)")
        return cls(info, merged)

    @classmethod
    def for_folder(cls, info, meta, graphs):
        return cls(info, find_graph(graphs, "decoder_merged") is not None)

    def load_model(self, seq):
        return load_model(self.info, seq)

    def parts(self, model, seq):
        return graph_parts(model, self.info, seq)

    def short_part(self, model, seq):
        """No short graph (short_graph.py: encoder exports with a sentence_embedding output only)."""
        return None

    def combine(self, folder, status):
        """The merged decoder, when asked: [(graph name, file)]."""
        if not self.merged:
            return []
        status(f"merging the decoders ({MERGED_FILE})")
        merge_decoder_graphs(folder)
        return [("decoder_merged", MERGED_FILE)]

    def record(self):
        """export.json's keys of this layout."""
        return {"seq2seq": True, "files": [*PART_FILES, *[MERGED_FILE] * self.merged], "merged_decoder": self.merged,
                "lsg": {**self.info.lsg_options,
                        "pass_global_tokens_to_decoder": self.info.config.get("pass_global_tokens_to_decoder", True)}}

    def validate(self, folder, model, settings, kind, graphs, ids=None, inputs_label="random ids", status=None):
        """compare_seq2seq on the folder's graphs, and generation by ORTModelForSeq2SeqLM as optimum loads the
        folder (the merged decoder when there is one), or without optimum by transformers' generate() on the
        same graphs (generation.py)."""
        sessions = Sessions(folder, graphs, settings.device, kind)
        if has_optimum():  # CPU tensors in and out, as PyTorch's side (optimum binds CUDA buffers by default)
            ort_model = load_seq2seq_model(folder, provider="CUDAExecutionProvider" if settings.device == "cuda" else
                                           "CPUExecutionProvider", use_io_binding=False)
        else:  # the same graphs under transformers' generate()
            from .generation import load_generator
            ort_model = load_generator(folder, sessions.parts(), use_merged=sessions.merged is not None)
        return compare_seq2seq(sessions, model, self.info, settings.lengths, settings.batch_size, settings.atol,
                               settings.enforced, ids=ids, inputs_label=inputs_label, ort_model=ort_model,
                               progress=status)


__all__ = ["Seq2Seq", "load_seq2seq_model", "compare_seq2seq", "EncoderModule", "DecoderModule", "decoder_names",
           "PART_FILES", "MERGED_FILE", "TASK"]
