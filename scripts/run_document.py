"""Run a converted LSG folder on a long document in a clean process (no lsg_export import): all of it,
or, when it is longer than the model's maximum length, its first tokens, saying so."""
import sys
import time

import torch
from transformers import AutoModel, AutoTokenizer

folder, document = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
text = open(document).read()
total = len(tokenizer(text, verbose=False)["input_ids"])  # verbose=False: no warning about the length
inputs = tokenizer(text, return_tensors="pt", truncation=True)  # the model's maximum length, set by convert
length = inputs["input_ids"].shape[1]
scope = f"all {total} tokens" if length == total else f"its first {length} of {total} tokens (the model's maximum)"
print(f"running {folder} on {document}: {scope}")
start = time.perf_counter()
with torch.no_grad():
    hidden = model(**inputs).last_hidden_state
print(f"{folder}: {length} tokens -> {tuple(hidden.shape)} in "
      f"{time.perf_counter() - start:.2f} s (torch, {torch.get_num_threads()} threads)")
