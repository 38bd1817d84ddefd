"""The families `convert` supports and what differs between them.

FAMILIES: the encoders; SEQ2SEQ_FAMILIES: the encoder-decoders; ALL_FAMILIES: both."""
from dataclasses import dataclass
from pathlib import Path

MODELING_DIR = Path(__file__).parent / "modeling"

AUTO_CLASSES = {
    "Model": "AutoModel",
    "ForPreTraining": "AutoModelForPreTraining",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForConditionalGeneration": "AutoModelForSeq2SeqLM",
    "ForCausalLM": "AutoModelForCausalLM",
}
COMMON_HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                "ForQuestionAnswering", "ForMultipleChoice")


@dataclass(frozen=True)
class Family:
    model_type: str
    prefix: str  # class-name prefix: Bert, Roberta, XLMRoberta, ...
    module: str  # modeling file copied into the output folder
    heads: tuple
    default_head: str
    position_offset: int = 0  # leading rows of the position table that are not positions (RoBERTa: 2)
    token_type_in_globals: bool = False  # bert and albert add token type 0 to the global embeddings
    needs: tuple = ()  # other modeling files the module imports
    seq2seq: bool = False  # encoder-decoder: LSG encoder, dense decoder
    table_offset: int = 0  # seq2seq: leading rows of the position tables not counted in max_position_embeddings
    sinusoidal: bool = False  # seq2seq: position tables are regenerated at the new length, not tiled

    def architecture(self, head):
        return f"{self.prefix}{head}"

    def head_of(self, architecture):
        """'BertForMaskedLM' or 'LSGBertForMaskedLM' -> 'ForMaskedLM' (None if not this family's)."""
        name = architecture[3:] if architecture.startswith("LSG") else architecture
        head = name[len(self.prefix):] if name.startswith(self.prefix) else None
        return head if head in self.heads else None

    def class_name(self, head):
        return f"LSG{self.prefix}{head}"

    def modeling_files(self):
        shared = ("lsg_attention.py", "lsg_base.py", "lsg_compat.py")
        return [MODELING_DIR / name for name in (*shared, *self.needs, self.module + ".py")]

    def auto_map(self):
        mapping = {"AutoConfig": f"{self.module}.LSG{self.prefix}Config"}
        mapping.update({AUTO_CLASSES[h]: f"{self.module}.{self.class_name(h)}" for h in self.heads})
        return mapping

    def load_module(self):
        import importlib
        return importlib.import_module(f"lsg_export.modeling.{self.module}")

    def model_class(self, head):
        return getattr(self.load_module(), self.class_name(head))

    def config_class(self):
        return getattr(self.load_module(), f"LSG{self.prefix}Config")


_ROBERTA = dict(module="modeling_lsg_roberta", heads=COMMON_HEADS, default_head="ForMaskedLM", position_offset=2,
                needs=("modeling_lsg_bert.py",))
FAMILIES = {f.model_type: f for f in (
    Family("bert", "Bert", "modeling_lsg_bert", COMMON_HEADS[:1] + ("ForPreTraining",) + COMMON_HEADS[1:],
           "ForPreTraining", token_type_in_globals=True),
    Family("roberta", "Roberta", **_ROBERTA),
    Family("camembert", "Camembert", **_ROBERTA),
    Family("xlm-roberta", "XLMRoberta", **_ROBERTA),
    Family("distilbert", "DistilBert", "modeling_lsg_distilbert", COMMON_HEADS, "ForMaskedLM"),
    Family("albert", "Albert", "modeling_lsg_albert", COMMON_HEADS[:1] + ("ForPreTraining",) + COMMON_HEADS[1:],
           "ForPreTraining", token_type_in_globals=True),
)}

SEQ2SEQ_HEADS = ("Model", "ForConditionalGeneration", "ForSequenceClassification", "ForQuestionAnswering",
                 "ForCausalLM")
_SEQ2SEQ = dict(default_head="ForConditionalGeneration", seq2seq=True, needs=("lsg_seq2seq.py",))
SEQ2SEQ_FAMILIES = {f.model_type: f for f in (
    Family("bart", "Bart", "modeling_lsg_bart", SEQ2SEQ_HEADS, table_offset=2, **_SEQ2SEQ),
    Family("mbart", "MBart", "modeling_lsg_mbart", SEQ2SEQ_HEADS, table_offset=2, **_SEQ2SEQ),
    Family("pegasus", "Pegasus", "modeling_lsg_pegasus", ("Model", "ForConditionalGeneration", "ForCausalLM"),
           sinusoidal=True, **_SEQ2SEQ),
)}
ALL_FAMILIES = {**FAMILIES, **SEQ2SEQ_FAMILIES}
