"""The encoder families `convert` supports and what differs between them."""
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
        return [MODELING_DIR / name for name in ("lsg_attention.py", "lsg_base.py", *self.needs, self.module + ".py")]

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
