"""What differs between transformers 4.5x and 5.x for the LSG models, in one place.

Imports only torch and transformers: copied next to every converted model with the family files."""
import inspect


def return_dict_of(config, return_dict):
    """A forward's return_dict: the argument, else the config's. `config.use_return_dict` (4.x: return_dict
    and not torchscript) warns from transformers 5, which has no torchscript flag."""
    if return_dict is not None:
        return return_dict
    return bool(getattr(config, "return_dict", True)) and not getattr(config, "torchscript", False)


def init_family_encoder(encoder, family_class, config, embed_tokens):
    """family_class.__init__ (BartEncoder, ...) on `encoder`, sharing the model's token table `embed_tokens`.

    4.x takes the table as an argument and shares its weight; 5.x builds its own and ties it by name
    (_tied_weights_keys), so the weight is shared here as 4.x does."""
    if "embed_tokens" in inspect.signature(family_class.__init__).parameters:
        family_class.__init__(encoder, config, embed_tokens)
    else:
        family_class.__init__(encoder, config)
        if embed_tokens is not None:
            encoder.embed_tokens.weight = embed_tokens.weight


def layer_hidden(output):
    """The hidden states a family encoder layer returns: (hidden, attentions) in 4.x, the tensor in 5.x."""
    return output[0] if isinstance(output, tuple) else output


__all__ = ["return_dict_of", "init_family_encoder", "layer_hidden"]
