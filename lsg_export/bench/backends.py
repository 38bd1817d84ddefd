"""The benchmarked backends: how each one is loaded and run on a (batch, length) input.

Every backend runs the task the target computes (the export's task, or the converted head's), on
full rows of random token ids (no padding: a benchmark measures whole documents):

  torch-lsg            the converted PyTorch LSG model (eager; float16 on CUDA)
  torch-dense          the same weights in the family's own transformers class (BertModel, ...) with
                       the tiled position table and scaled_dot_product_attention: full quadratic attention
  torch-chunked        the original 512-token model (first 512 position rows) on independent 512-token
                       chunks of the document, all chunks in one batch: the cheapest thing users do
  torch-longformer     a random-weight Longformer of the same size whose window covers the LSG local span
  ort-*                ONNX Runtime sessions on exports (exports.py makes the missing ones); IO binding on CUDA
  ov-*                 OpenVINO (the optional `openvino` package): ov-f32 / ov-bf16 on the gather graph
                       (ort-gather's export), in float32 or, where the CPU has native bf16, bf16; ov-sdpa,
                       ov-mixed and ov-int8 on what `lsg-export openvino` makes of it (the SDPA graph; bf16
                       where harmless; int8 weights)
                       (openvino_backend.py)

Encoder-decoders (bart, mbart, pegasus: task text2text-generation) run on the backends marked
`seq2seq`: torch-lsg, torch-dense and the ort-* made for them (gather, optimized, int8, fp16, custom-op); their
Runner times the encoder and, through `runner.generate`, generation of a fixed number of new tokens (greedy,
or beam search with num_beams > 1).

A loader takes a worker_spec.WorkerSpec and returns a Runner; the measuring loop (measure.py) calls
`runner.prepare(batch, length)` and times the zero-argument function it returns; `runner.output(length, ids)`
gives the first output on a document's tokens as an array (the quality columns compare it with float32
PyTorch's).
"""
from dataclasses import dataclass, field

import torch

from ..errors import LSGExportError, first_line

CHUNK = 512  # the length the original encoders were trained at


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    engine: str  # "torch", "ort" or "openvino"
    devices: tuple = ("cpu", "cuda")
    default: bool = True  # run when --backends is not given (and the device fits)
    export: dict = field(default_factory=dict)  # ORT: export_onnx options of its graph
    seq2seq: bool = False  # runs encoder-decoders (encoder latency and generation)
    requantize: dict = None  # ORT: quantize_int8 options applied to the float32 export (exports.py), for int8
    # methods `lsg-export onnx --quantize` does not offer
    graph_of: str = None  # the backend whose export it runs (OpenVINO: ort-gather's graph)

    @property
    def runs_export(self):
        """The ort-* backend whose export this one runs (None: it runs no export)."""
        return self.graph_of or (self.name if self.engine == "ort" else None)

    def load(self, spec):
        return LOADERS[self.name](spec)


BACKENDS = {b.name: b for b in (
    Backend("torch-lsg", "PyTorch LSG model (eager; float16 on CUDA)", "torch", seq2seq=True),
    Backend("torch-dense", "same weights, family's transformers class, full attention (sdpa)", "torch",
            seq2seq=True),
    Backend("torch-chunked", f"original {CHUNK}-token model on independent {CHUNK}-token chunks", "torch"),
    Backend("ort-gather", "ONNX Runtime, gather graph", "ort", export={"attention": "gather"}, seq2seq=True),
    Backend("ort-gather-optimized", "ONNX Runtime, gather graph --optimize O2", "ort",
            export={"attention": "gather", "optimize": "O2"}, seq2seq=True),
    Backend("ort-int8", "ONNX Runtime, gather graph O2 + int8 MatMul weights", "ort", devices=("cpu",),
            export={"attention": "gather", "optimize": "O2", "quantize": "int8"}, seq2seq=True),
    Backend("ort-fp16", "ONNX Runtime, gather graph O2 in float16", "ort", devices=("cuda",),
            export={"attention": "gather", "optimize": "O2", "fp16": True, "device": "cuda"}, seq2seq=True),
    Backend("ort-custom-op", "ONNX Runtime, custom-op attention (ai.lsg.LSGAttention)", "ort",
            export={"attention": "custom-op"}, seq2seq=True),
    Backend("ort-int8-custom-op", "ONNX Runtime, custom-op graph O2 + int8 MatMul weights", "ort", devices=("cpu",),
            export={"attention": "custom-op", "optimize": "O2", "quantize": "int8"}, seq2seq=True),
    Backend("ort-int8-keep12-custom-op", "ONNX Runtime, custom-op graph O2 + int8 MatMul weights but the 12 that "
            "lose most (a third of MiniLM's), kept float32 (--keep-float 12)", "ort", devices=("cpu",),
            default=False, export={"attention": "custom-op", "optimize": "O2", "quantize": "int8", "keep_float": 12}),
    Backend("ort-int8-per-tensor", "ONNX Runtime, gather graph O2 + int8 MatMul weights, one scale per tensor "
            "(the int8 before per-channel scales, for comparison)", "ort", devices=("cpu",), default=False,
            export={"attention": "gather", "optimize": "O2"}, requantize={"per_channel": False}),
    Backend("ort-int8-per-tensor-custom-op", "ONNX Runtime, custom-op graph O2 + int8 MatMul weights, one scale per "
            "tensor (for comparison)", "ort", devices=("cpu",), default=False,
            export={"attention": "custom-op", "optimize": "O2"}, requantize={"per_channel": False}),
    Backend("ov-f32", "OpenVINO, gather graph, float32", "openvino", devices=("cpu",), graph_of="ort-gather"),
    Backend("ov-bf16", "OpenVINO, gather graph, bf16 inference precision (CPUs with native bf16)", "openvino",
            devices=("cpu",), graph_of="ort-gather"),
    Backend("ov-sdpa", "OpenVINO, SDPA graph (lsg-export openvino --weights none: the block attention fused), "
            "float weights, the CPU's default precision (bf16 where native)", "openvino", devices=("cpu",),
            graph_of="ort-gather"),
    Backend("ov-mixed", "OpenVINO, SDPA graph, float weights, bf16 written into the graph for the weight MatMuls "
            "and the attention, float32 for the key selection and the rest (lsg-export openvino --weights none "
            "--precision mixed; CPUs with native bf16)", "openvino", devices=("cpu",), graph_of="ort-gather"),
    Backend("ov-int8", "OpenVINO, SDPA graph, int8 weights with activations quantized per group at run time "
            "(lsg-export openvino; needs nncf), the CPU's default precision elsewhere", "openvino", devices=("cpu",),
            graph_of="ort-gather"),
    Backend("ov-int8-keep2", "ov-int8 with the 2 MatMul weights whose int8 loses most left float (lsg-export "
            "openvino --keep-float 2, ranked on GPL-3 when loaded: minutes)", "openvino", devices=("cpu",),
            graph_of="ort-gather", default=False),
    Backend("torch-longformer", "random-weight Longformer of the same size, window = LSG local span", "torch"),
)}


def export_kind(meta):
    """The ort-* backend an export folder (its export.json) serves."""
    if meta.get("fp16"):
        return "ort-fp16"
    if meta.get("quantize"):  # exports made before per-channel scales record no per_channel: one scale per tensor
        kind = "ort-int8" if meta["quantize"].get("per_channel") else "ort-int8-per-tensor"
        if meta["quantize"].get("kept_float"):
            kept = f"ort-int8-keep{meta['quantize']['kept_float']['count']}-custom-op"
            return kept if kept in BACKENDS and meta.get("attention") == "custom-op" else None
        return kind + "-custom-op" if meta.get("attention") == "custom-op" else kind
    if meta.get("attention", "gather") != "gather":
        return "ort-custom-op" if meta["attention"] == "custom-op" else None
    return "ort-gather-optimized" if meta.get("optimize") else "ort-gather"


def seq2seq_skip_reason(name):
    """Why backend `name` does not run encoder-decoders."""
    if BACKENDS[name].engine == "torch":
        return "encoder-only baseline"
    if BACKENDS[name].engine == "openvino":
        return "it runs the encoders' gather graph only"
    return "its export is not made for encoder-decoders"


def select_backends(names, device, seq2seq=False):
    """Backend names to run: `names` (list or "a,b") checked, else the defaults for the device (for an
    encoder-decoder target, `seq2seq`, those that run one)."""
    if not names:
        return [b.name for b in BACKENDS.values()
                if b.default and device in b.devices and (b.seq2seq or not seq2seq)]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise LSGExportError(f"unknown backend {', '.join(unknown)}; available: {', '.join(BACKENDS)}")
    wrong = [n for n in names if device not in BACKENDS[n].devices]
    if wrong:
        raise LSGExportError(f"{', '.join(wrong)} does not run on {device} (it runs on "
                             f"{' / '.join(BACKENDS[wrong[0]].devices)})")
    if seq2seq:
        encoder_only = [n for n in names if not BACKENDS[n].seq2seq]
        if encoder_only:
            verb = "does" if len(encoder_only) == 1 else "do"
            raise LSGExportError(f"{', '.join(encoder_only)} {verb} not run encoder-decoders "
                                 f"({seq2seq_skip_reason(encoder_only[0])}); for them: "
                                 f"{', '.join(n for n, b in BACKENDS.items() if b.seq2seq)}")
    return list(dict.fromkeys(names))


def skipped_for_seq2seq(device):
    """{backend: reason} of the device's default backends an encoder-decoder target leaves out."""
    return {b.name: seq2seq_skip_reason(b.name) for b in BACKENDS.values()
            if b.default and device in b.devices and not b.seq2seq}


# --- runners ------------------------------------------------------------------------------------

class Runner:
    """prepare(batch, length, ids=None) -> a function running one forward on that input (ids: (batch, length)
    token ids of a document instead of random ones) and returning its outputs; sync() waits for the device.

    Encoder-decoders: prepare times the encoder, generate(batch, length, new_tokens, num_beams=1) -> a
    function running generation of exactly new_tokens tokens from that input (None for encoders).
    restore(output, batch, length): the output in the (batch, length, ...) layout of the LSG model's, for
    backends that reshape the input (torch-chunked)."""

    def __init__(self, prepare, sync=None, max_length=None, note=None, generate=None, restore=None):
        self._prepare, self.sync, self.max_length, self.note = prepare, sync or (lambda: None), max_length, note
        self.generate, self.restore = generate, restore

    def limit(self, batch, length):
        """Why this length cannot run here (None: it can)."""
        if self.max_length is not None and length > self.max_length:
            return f"above its maximum length {self.max_length}"
        return None

    def prepare(self, batch, length, ids=None):
        return self._prepare(batch, length, ids)

    def output(self, length, ids=None):
        """The first output of one row of `length` tokens (ids: (1, length), else random ids), float32 numpy."""
        result = self.prepare(1, length, ids)()
        self.sync()
        array = first_array(result)
        return self.restore(array, 1, length) if self.restore is not None else array


def first_array(result):
    """The first output of a call, whatever the engine returned, as a float32 numpy array."""
    import numpy as np
    if hasattr(result, "copy_outputs_to_cpu"):  # ONNX Runtime's IO binding (CUDA)
        result = result.copy_outputs_to_cpu()
    if getattr(result, "last_hidden_state", None) is not None:  # transformers' and optimum's model outputs
        result = result.last_hidden_state
    if isinstance(result, (list, tuple)):
        result = result[0]
    if isinstance(result, torch.Tensor):
        return result.detach().float().cpu().numpy()
    if hasattr(result, "numpy"):  # OrtValue
        result = result.numpy()
    return np.asarray(result, dtype=np.float32)


def bench_inputs(info, task, batch, length, ids=None):
    """Full rows (no padding) of random ids (or `ids`, a document's), in ONNX input order, as int64 torch tensors."""
    from ..onnx.tasks import make_inputs
    return make_inputs(info, task, batch, length, lengths=[length] * batch,
                       generator=torch.Generator().manual_seed(length), ids=ids)


def torch_settings(spec):
    device = torch.device(spec.device)
    return device, torch.float16 if device.type == "cuda" else torch.float32


def torch_runner(module, spec, info, task, transform=None, max_length=None, note=None, restore=None):
    """A Runner over a torch module called with the ONNX inputs in order (after `transform`)."""
    device, dtype = torch_settings(spec)
    module = module.to(device=device, dtype=dtype).eval()

    def prepare(batch, length, ids=None):
        inputs = bench_inputs(info, task, batch, length, ids)
        if transform is not None:
            inputs = transform(inputs)
        args = [value.to(device) for value in inputs.values()]

        def call():
            with torch.inference_mode():
                return module(*args)
        return call

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return Runner(prepare, sync, max_length, note, restore=restore)


def target_info(spec):
    from ..onnx.tasks import read_model_folder
    return read_model_folder(spec.model)


def load_torch_lsg(spec):
    from ..onnx.encoder_only import load_torch_model
    from ..onnx.tasks import TaskModule
    info = target_info(spec)
    if info.family.seq2seq:
        return torch_seq2seq_runner(load_torch_model(info), spec, info)
    return torch_runner(TaskModule(load_torch_model(info), spec.task), spec, info, spec.task,
                        max_length=info.max_length)


def lsg_state_dict(info):
    """The converted weights as a state dict (any format the folder holds), without the global tokens."""
    from ..onnx.encoder_only import load_torch_model
    state = load_torch_model(info).state_dict()
    return {k: v for k, v in state.items() if "global_embeddings" not in k}


def family_model(info, positions, state):
    """The family's own transformers class (same head) with `positions` position rows, loaded from `state`."""
    import transformers

    from ..compat import no_init_weights
    from ..quiet import quiet_transformers
    from ..modeling.lsg_base import LSG_DEFAULTS
    config_dict = {k: v for k, v in info.config.items() if k not in (*LSG_DEFAULTS, "auto_map", "architectures")}
    config_dict["max_position_embeddings"] = positions + info.family.position_offset
    cls = getattr(transformers, info.family.architecture(info.head))
    config = cls.config_class.from_dict(config_dict)
    for implementation in ("sdpa", "eager"):  # sdpa where the family has it
        try:
            config._attn_implementation = implementation
            with quiet_transformers(), no_init_weights():
                model = cls(config)
            break
        except ValueError:
            continue
    rows = positions + info.family.position_offset
    state = {k: (v[:rows] if k.endswith("position_embeddings.weight") else v) for k, v in state.items()}
    with torch.no_grad():
        missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing:
        raise LSGExportError(f"{cls.__name__} lacks weights the LSG folder should have: {', '.join(missing[:3])}")
    return model.eval(), config._attn_implementation


def load_torch_dense(spec):
    from ..onnx.tasks import TaskModule
    info = target_info(spec)
    model, implementation = family_model(info, info.max_length, lsg_state_dict(info))
    if info.family.seq2seq:  # BartForConditionalGeneration, ...: a dense encoder, the same decoder
        return torch_seq2seq_runner(model, spec, info, note=f"{type(model).__name__}, attention {implementation}")
    return torch_runner(TaskModule(model, spec.task), spec, info, spec.task, max_length=info.max_length,
                        note=f"{type(model).__name__}, attention {implementation}")


def chunked(inputs, chunk, pad_id):
    """(B, L) inputs -> (B * ceil(L / chunk), chunk): independent chunks, the last one padded (a document
    shorter than a chunk is one chunk of its own length, as a user would run it)."""
    out = {}
    for name, value in inputs.items():
        batch, length = value.shape
        chunk = min(chunk, length)
        total = -(-length // chunk) * chunk
        fill = pad_id if name == "input_ids" else 0
        padded = torch.nn.functional.pad(value, (0, total - length), value=fill)
        out[name] = padded.reshape(batch * (total // chunk), chunk)
    return out


def unchunked(output, batch, length):
    """The chunks' per-token output (batch * chunks, chunk, ...) as (batch, length, ...), the padding dropped;
    an output without a token dim (one per chunk) cannot be put back."""
    if output.ndim < 3 or output.shape[0] % batch:
        raise LSGExportError("its outputs are one per chunk: nothing to compare with one per document")
    return output.reshape(batch, -1, *output.shape[2:])[:, :length]


def load_torch_chunked(spec):
    from ..onnx.tasks import TaskModule
    info = target_info(spec)
    if spec.task == "multiple-choice":
        raise LSGExportError("torch-chunked does not run multiple-choice inputs")
    chunk = min(CHUNK, info.max_length)
    model, _ = family_model(info, chunk, lsg_state_dict(info))
    pad = info.config.get("pad_token_id")
    return torch_runner(TaskModule(model, spec.task), spec, info, spec.task,
                        transform=lambda inputs: chunked(inputs, chunk, pad if isinstance(pad, int) else 0),
                        note=f"{type(model).__name__} on {chunk}-token chunks", restore=unchunked)


class LongformerModule(torch.nn.Module):
    """Longformer called with the ONNX inputs; the first token is global, as the LSG models' one global."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        global_mask = torch.zeros_like(attention_mask)
        global_mask[:, 0] = 1
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          global_attention_mask=global_mask).last_hidden_state


def load_torch_longformer(spec):
    from transformers import LongformerConfig, LongformerModel

    from ..quiet import quiet_transformers
    info = target_info(spec)
    if spec.task == "multiple-choice":
        raise LSGExportError("torch-longformer does not run multiple-choice inputs")
    config = info.family.config_class().from_dict(info.config)
    block = info.config["block_size"]
    window = 3 * block + (3 * block) % 2  # keys per query: the LSG local span (previous, own, next block)
    longest = max(spec.lengths)
    with quiet_transformers():
        longformer = LongformerConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
            attention_window=window, max_position_embeddings=longest + window + 2, pad_token_id=1, type_vocab_size=1)
        torch.manual_seed(0)
        model = LongformerModel(longformer, add_pooling_layer=False)
    ids_only = lambda inputs: {"input_ids": inputs["input_ids"].clamp(min=2),
                               "attention_mask": inputs["attention_mask"]}
    return torch_runner(LongformerModule(model), spec, info, spec.task, transform=ids_only,
                        note=f"random weights, attention window {window}, first token global")


def ort_options(threads):
    """SessionOptions of every ort-* backend: `threads` intra-op threads, nothing else (what a server gets:
    the graphs carry their CPU rewrites themselves, onnx/rewrites/)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def ort_session(path, device, attention, threads):
    """An ONNX Runtime session opened by lsg_export.onnx.validate.make_session (providers and set-up of the
    attention kind, e.g. the custom-op library) with ort_options."""
    from ..onnx.attention_kinds import get_attention_kind
    from ..onnx.validate import make_session
    return make_session(path, device, get_attention_kind(attention), options=ort_options(threads))


# --- encoder-decoders: the encoder, and generation -------------------------------------------------

class Generation:
    """One timed generation: the encoder, then generate() from its output (the same work as generate()
    alone, which runs the encoder first); each run's decoding time (the part after the encoder) is kept in
    `decode_seconds`, so that the decoder's pace comes from the same run, not from two noisy medians."""

    def __init__(self, encode, generate, inputs, settings, sync):
        self.encode, self.generate, self.inputs, self.settings, self.sync = encode, generate, inputs, settings, sync
        self.decode_seconds = []

    def __call__(self):
        import time
        encoded = self.encode(self.inputs)
        self.sync()
        start = time.perf_counter()
        sequences = self.generate(self.inputs, encoded, self.settings)
        self.sync()
        self.decode_seconds.append(time.perf_counter() - start)
        batch, new_tokens = self.inputs["input_ids"].shape[0], self.settings["max_new_tokens"]
        if tuple(sequences.shape) != (batch, new_tokens + 1):  # a silent early stop would inflate tokens/s
            raise LSGExportError(f"generate returned {tuple(sequences.shape)} tokens, not ({batch}, 1 + {new_tokens})")


def seq2seq_runner(encode, generate, info, device, max_length, note, sync=None):
    """A Runner of an encoder-decoder: encode(inputs) runs the encoder and returns its output,
    generate(inputs, encoder_outputs, settings) the generated sequences (decoder start token, new tokens)."""
    sync = sync or (lambda: None)

    def inputs_for(batch, length, ids=None):  # the encoder's inputs, full rows as for the encoders
        inputs = bench_inputs(info, "feature-extraction", batch, length, ids)
        return {name: inputs[name].to(device) for name in ("input_ids", "attention_mask")}

    def prepare(batch, length, ids=None):
        inputs = inputs_for(batch, length, ids)
        return lambda: encode(inputs)

    def prepare_generate(batch, length, new_tokens, num_beams=1):
        from ..onnx.seq2seq import generation_settings
        return Generation(encode, generate, inputs_for(batch, length), generation_settings(new_tokens, num_beams), sync)

    return Runner(prepare, sync, max_length, note, generate=prepare_generate)


def torch_seq2seq_runner(model, spec, info, note=None):
    device, dtype = torch_settings(spec)
    model = model.to(device=device, dtype=dtype).eval()
    encoder = model.get_encoder()

    def encode(inputs):
        with torch.inference_mode():
            return encoder(**inputs)

    def generate(inputs, encoder_outputs, settings):
        with torch.inference_mode():
            return model.generate(**inputs, encoder_outputs=encoder_outputs, **settings)

    return seq2seq_runner(encode, generate, info, device, info.max_length,
                          note=note or f"{type(model).__name__}, decoder attention {model.config._attn_implementation}",
                          sync=torch.cuda.synchronize if device.type == "cuda" else None)


def load_ort_seq2seq(spec, folder, meta):
    """optimum's ORTModelForSeq2SeqLM on the export's graphs (encoder_model.onnx and the merged decoder, or
    the decoder and decoder with past when the export has no merged one), as optimum loads the folder."""
    from ..compat import has_optimum
    from ..graph_list import find_graph, graph_list
    from ..onnx.seq2seq import load_seq2seq_model
    info = target_info(spec)
    device = spec.device
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    graphs = graph_list(meta)
    merged = find_graph(graphs, "decoder_merged") is not None
    try:
        if has_optimum():
            model = load_seq2seq_model(folder, provider=provider, session_options=ort_options(spec.threads))
        else:  # without optimum: the same graphs under transformers' generate()
            model = load_ort_generator(folder, meta, graphs, spec)
    except LSGExportError:
        raise
    except Exception as error:
        raise LSGExportError(f"ONNX Runtime cannot load {folder} ({first_line(error)})") from None
    if device == "cuda" and "CUDAExecutionProvider" not in model.encoder.session.get_providers():
        raise LSGExportError("ONNX Runtime has no CUDAExecutionProvider here")
    decoders = "merged decoder" if merged else "decoder and decoder with past"
    level = (meta.get("optimize") or {}).get("level", "none")
    return seq2seq_runner(lambda inputs: model.encoder(**inputs),
                          lambda inputs, encoded, settings: model.generate(**inputs, encoder_outputs=encoded,
                                                                           **settings),
                          info, torch.device(device),
                          int(meta["seq"]),
                          note=f"{folder} (encoder, {decoders}; {meta.get('precision', 'fp32')}, optimize "
                               f"{level}, attention {meta.get('attention')})",
                          sync=torch.cuda.synchronize if device == "cuda" else None)


def load_ort_generator(folder, meta, graphs, spec):
    """lsg_export.onnx.generation's generator on the export's listed graphs (the merged decoder's when there is
    one), each session opened as ort_session."""
    from ..onnx.generation import load_generator
    parts = {"encoder": "encoder", "decoder": "decoder", "decoder_with_past": "decoder_with_past",
             "decoder_merged": "merged"}  # graph name -> the generator's part name
    sessions = {parts[g.name]: ort_session(folder / g.file, spec.device, meta.get("attention", "gather"), spec.threads)
                for g in graphs if g.name in parts}
    return load_generator(folder, sessions, use_merged="merged" in sessions)


def load_ort(spec):
    from pathlib import Path

    from ..graph_list import find_graph, graph_list, single_graph
    from ..sources import read_export_json
    folder = Path(spec.export)
    meta = read_export_json(folder)
    graphs = graph_list(meta)
    if find_graph(graphs, "encoder") is not None:  # optimum's seq2seq layout
        return load_ort_seq2seq(spec, folder, meta)
    info = target_info(spec)
    device = spec.device
    graph = single_graph(folder, graphs, "the bench runs one graph, or the seq2seq layout")
    session = ort_session(folder / graph.file, device, meta.get("attention", "gather"), spec.threads)
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise LSGExportError("ONNX Runtime has no CUDAExecutionProvider here")
    feeds = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def prepare(batch, length, ids=None):
        inputs = bench_inputs(info, meta["task"], batch, length, ids)
        arrays = {name: inputs[name].numpy() for name in feeds}
        if device != "cuda":
            return lambda: session.run(outputs, arrays)
        import onnxruntime as ort
        binding = session.io_binding()  # inputs copied to the GPU once; outputs stay there
        for name, array in arrays.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        for name in outputs:
            binding.bind_output(name, "cuda")

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding  # its outputs stay on the GPU unless asked for (first_array)
        return call

    return Runner(prepare, max_length=int(meta["seq"]), note=f"{folder} ({meta.get('precision', 'fp32')}, "
                  f"optimize {(meta.get('optimize') or {}).get('level', 'none')}, attention {meta.get('attention')})")


def load_openvino(spec):
    """OpenVINO on the export spec.export, the float32 gather graph of an encoder (openvino_backend.py)."""
    from pathlib import Path

    from ..graph_list import graph_list, single_graph
    from ..sources import read_export_json
    from ..openvino.weights import GROUP_SIZE
    from ..openvino.export import cached_sdpa_graph
    from .openvino_backend import KEEP_FLOAT, SDPA, openvino_session
    folder = Path(spec.export)
    meta = read_export_json(folder)
    if meta.get("attention", "gather") != "gather" or meta.get("quantize") or meta.get("fp16"):
        raise LSGExportError(f"OpenVINO runs the float32 gather graph; {folder} is not one")
    graph = single_graph(folder, graph_list(meta), "OpenVINO runs the encoders' single graph")
    info = target_info(spec)
    path = cached_sdpa_graph(folder, meta) if spec.backend in SDPA else folder / graph.file
    kept = None
    if spec.backend in KEEP_FLOAT:
        from ..onnx.validate import default_text, document_inputs
        from ..openvino.export import rank_for_keep_float
        document, _ = document_inputs(folder, default_text(True, folder))  # GPL-3 where there
        kept = rank_for_keep_float(folder, path, meta, KEEP_FLOAT[spec.backend], "int8", GROUP_SIZE, document, None)
    run, feeds, note = openvino_session(path, spec.threads, spec.backend, kept)

    def prepare(batch, length, ids=None):
        inputs = bench_inputs(info, meta["task"], batch, length, ids)
        arrays = {name: inputs[name].numpy() for name in feeds}
        return lambda: run(arrays)

    return Runner(prepare, max_length=int(meta["seq"]), note=f"{folder} ({note})")


def unavailable(name):
    """(status, reason) when backend `name` cannot run here whatever the model (OpenVINO missing, no native
    bf16), else None: its cells get that status, and its export is not made."""
    if BACKENDS[name].engine != "openvino":
        return None
    from .openvino_backend import openvino_unavailable
    return openvino_unavailable(name)


LOADERS = {
    "torch-lsg": load_torch_lsg,
    "torch-dense": load_torch_dense,
    "torch-chunked": load_torch_chunked,
    "torch-longformer": load_torch_longformer,
    **{name: load_ort for name, b in BACKENDS.items() if b.engine == "ort"},
    **{name: load_openvino for name, b in BACKENDS.items() if b.engine == "openvino"},
}
