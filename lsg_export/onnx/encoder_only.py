"""The encoder layout: one graph, model.onnx, of an encoder (BERT, RoBERTa, ...) with its task's head, as
optimum's ORTModelFor<task> loads it, feature-extraction with a pooled `sentence_embedding` output too when
it pools (pooling.py); validated against the PyTorch model (validate.compare)."""
import torch

from ..errors import LSGExportError
from ..graph_list import MODEL_FILE
from ..quiet import quiet_transformers
from .parts import GraphPart, example_length, weight_bytes
from .pooling import choose_pooling
from .short_graph import SHORT_FILE, dense_copy, short_lengths, short_limit, short_part, short_rows
from .tasks import TaskModule, infer_task, input_axes, input_names, make_inputs, output_axes, output_names
from .validate import compare, make_session


def load_torch_model(info):
    """The PyTorch model of a converted folder (the package's own LSG classes: no remote code), fp32, eval."""
    try:
        with quiet_transformers():
            model = info.family.model_class(info.head).from_pretrained(str(info.path), dtype=torch.float32)
    except (OSError, RuntimeError, ValueError, TypeError) as error:
        raise LSGExportError(f"{info.path}: cannot load the model ({str(error).splitlines()[0][:200]})") from None
    return model.eval()


def limit_positions(model, rows):
    """Keep the first `rows` rows of the position table: inputs longer than --seq then fail in the graph
    (the position lookup) instead of running unvalidated. Results at lengths <= --seq are unchanged."""
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        if isinstance(table, torch.nn.Embedding) and table.num_embeddings > rows:
            smaller = torch.nn.Embedding(rows, table.embedding_dim, padding_idx=table.padding_idx)
            smaller.weight.data = table.weight.data[:rows].clone()
            module.position_embeddings = smaller
            for name in ("position_ids", "token_type_ids"):
                buffer = getattr(module, name, None)
                if isinstance(buffer, torch.Tensor) and buffer.dim() == 2 and buffer.shape[1] > rows:
                    persistent = name not in module._non_persistent_buffers_set
                    module.register_buffer(name, buffer[:, :rows].clone(), persistent=persistent)


class EncoderOnly:
    """One graph part, "model" (model.onnx): the task module of an encoder. pooling: export.json's
    {"mode", "normalize"} of its sentence_embedding output, None without one. short: the longest input of
    model_short.onnx beside it (short_graph.py), None without one."""
    label = "encoder"
    external_data = True  # weights above 2 GB go to model.onnx.data
    side_files = ()

    def __init__(self, info, task, outputs=None, pooling=None, short=None):
        self.info, self.task, self.pooling, self.short = info, task, pooling, short
        self.outputs = list(outputs) if outputs is not None else output_names(task, pooling)

    @classmethod
    def serves(cls, family):
        return not family.seq2seq

    @classmethod
    def reads(cls, graphs):
        return [g.name for g in graphs] == ["model"]

    @classmethod
    def for_export(cls, info, task, merge_decoders, pooling=None):
        if merge_decoders is not None:
            raise LSGExportError(f"--merge-decoders is for encoder-decoders (bart, mbart, pegasus); {info.path} "
                                 f"holds a {info.family.class_name(info.head)}")
        task = infer_task(info, task)
        return cls(info, task, pooling=choose_pooling(info.path, task, pooling))

    @classmethod
    def for_folder(cls, info, meta, graphs):
        return cls(info, meta["task"], graphs[0].outputs or meta["outputs"], meta.get("pooling"),
                   (meta.get("short_graph") or {}).get("max_tokens"))

    def load_model(self, seq):
        """The task module of the PyTorch model, its position table cut to seq."""
        model = load_torch_model(self.info)
        limit_positions(model, seq + self.info.family.position_offset)
        return TaskModule(model, self.task, self.pooling).eval()

    def parts(self, module, seq):
        names = input_names(self.info.family)
        example = make_inputs(self.info, self.task, 2, example_length(self.info.config["block_size"], seq))
        return [GraphPart("model", MODEL_FILE, module, {name: example[name] for name in names}, names, self.outputs,
                          {name: input_axes(self.task) for name in names}, output_axes(self.task, self.pooling),
                          optimizer_config=self.info.config, weight_bytes=weight_bytes(module),
                          doc=f"LSG {self.info.family.class_name(self.info.head)} ({self.task}) by lsg-export")]

    def short_part(self, module, seq):
        """model_short.onnx's part (short_graph.py) for an export with a sentence_embedding output, else None."""
        if not self.pooling:
            return None
        part = self.parts(module, seq)[0]
        self.short = short_limit(module.model.config, seq)
        short = dense_copy(module)
        limit_positions(short, self.short + self.info.family.position_offset)  # longer inputs fail in the graph
        example = make_inputs(self.info, self.task, 2, max(2, self.short * 3 // 4))
        return short_part(part, short, self.short, {name: example[name] for name in part.example})

    def combine(self, folder, status):
        """Graphs made from the exported ones: none."""
        return []

    def record(self):
        """export.json's keys of this layout."""
        names = input_names(self.info.family)
        return {"inputs": names, "outputs": self.outputs, "input_axes": list(input_axes(self.task)),
                "pooling": self.pooling, "lsg": self.info.lsg_options}

    def validate(self, folder, module, settings, kind, graphs, ids=None, inputs_label="random ids", status=None):
        def run(file, lengths):
            session = make_session(folder / file, settings.device, kind)
            return compare(session, module, self.info, self.task, self.outputs, lengths, settings.batch_size,
                           settings.atol, settings.enforced, ids=ids, inputs_label=inputs_label, progress=status)

        report = run(graphs[0].file, settings.lengths)
        if self.short:
            report.rows += short_rows(run(SHORT_FILE, short_lengths(self.short, self.info.config["block_size"])),
                                      self.short)
        return report


__all__ = ["EncoderOnly", "load_torch_model", "limit_positions"]
