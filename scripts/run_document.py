"""Run a converted LSG folder on a long document in a clean process (no lsg_export import)."""
import sys
import time

import torch
from transformers import AutoModel, AutoTokenizer

folder, document = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
inputs = tokenizer(open(document).read(), return_tensors="pt", truncation=True)
start = time.perf_counter()
with torch.no_grad():
    hidden = model(**inputs).last_hidden_state
print(f"{folder}: {inputs['input_ids'].shape[1]} tokens -> {tuple(hidden.shape)} in "
      f"{time.perf_counter() - start:.2f} s (torch, {torch.get_num_threads()} threads)")
