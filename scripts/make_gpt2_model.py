#!/usr/bin/env python3
"""Makes tests/data/models/tiny-gpt2/: a random-weight GPT2LMHeadModel and
its Hugging Face goldens, in the format of ../shared/golden/models/<name>/
(cases.json with ids and greedy continuations; logits.safetensors with
prompt<i>.logits, float32 [len(ids), vocab], computed in float32 from the
stored bf16 weights).

Not run by CI (the tests read the committed files). Needs a scratch venv
outside the repository with the pinned versions:

    python3 -m venv /tmp/gpt2-venv
    /tmp/gpt2-venv/bin/pip install torch transformers==5.17.0 tokenizers==0.23.2
    /tmp/gpt2-venv/bin/python scripts/make_gpt2_model.py --shared /work/shared --out tests/data/models/tiny-gpt2

The model is small enough to commit (n_embd 64, 3 layers, 4 heads of 16,
n_positions 128, bf16) because it shares stories260K's tokenizer
(vocabulary 512), as the tiny-* models in ../shared do; the real gpt2
tokenizer (vocabulary 50257) is exercised end to end by
tests/tools/cli_gpt2.sh on a random-weight copy of this config.
Weights are drawn wider than GPT-2's init (std 0.02 makes every logit
nearly equal, and greedy ties would test rounding, not the model): 2-D
weights std 0.15, biases std 0.05, LayerNorm weights 1 + 0.1 N(0, 1).
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

TRANSFORMERS_VERSION = "5.17.0"
PROMPT_TEXT = "Once upon a time, there was a little dog"
N_GREEDY = 32
BOS, EOS = 1, 2


def make_model(seed):
    cfg = GPT2Config(vocab_size=512, n_embd=64, n_layer=3, n_head=4, n_positions=128, n_inner=None,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=BOS,
                     eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.05 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(0.15 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model.to(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    assert transformers.__version__ == TRANSFORMERS_VERSION, transformers.__version__

    out = args.out
    os.makedirs(out, exist_ok=True)
    model = make_model(args.seed)
    model.save_pretrained(out)  # bf16 weights, config.json, generation_config.json
    tok_dir = os.path.join(args.shared, "models", "stories260K")
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts = [
        [BOS],
        tok.encode(PROMPT_TEXT, add_special_tokens=True).ids,
        [BOS] + torch.randint(3, 512, (47,), generator=g).tolist(),
    ]
    # the goldens in float32 from the stored bf16 weights, as ../shared's
    ref = GPT2LMHeadModel.from_pretrained(out, dtype=torch.float32).eval()
    cases, tensors = [], {}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            tensors[f"prompt{i}.logits"] = ref(x).logits[0].float().contiguous()
            gen = ref.generate(x, do_sample=False, max_new_tokens=N_GREEDY, eos_token_id=EOS, pad_token_id=0,
                               attention_mask=torch.ones_like(x))
            cases.append({"name": f"prompt{i}", "ids": ids, "greedy": gen[0, len(ids):].tolist()})
    save_file(tensors, os.path.join(out, "logits.safetensors"))
    meta = {"model": "tiny-gpt2", "architecture": "GPT2LMHeadModel", "weights_dtype": "torch.bfloat16",
            "transformers": transformers.__version__, "torch": torch.__version__, "seed": args.seed,
            "cases": cases}
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
