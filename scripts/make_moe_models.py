#!/usr/bin/env python3
"""Makes tests/data/models/tiny-qwen2-moe/ and tiny-qwen3-moe/: random-weight
Qwen2MoeForCausalLM and Qwen3MoeForCausalLM checkpoints and their Hugging
Face goldens, in the format of ../shared/golden/models/<name>/ (cases.json
with ids and greedy continuations; logits.safetensors with prompt<i>.logits,
float32 [len(ids), vocab], computed in float32 from the stored bf16
weights).

Not run by CI (the tests read the committed files). Needs a scratch venv
outside the repository with the pinned transformers:

    python3 -m venv /tmp/moe-venv
    /tmp/moe-venv/bin/pip install torch transformers==5.17.0 tokenizers==0.23.2
    /tmp/moe-venv/bin/python scripts/make_moe_models.py --shared /work/shared --out tests/data/models

Both share stories260K's tokenizer (vocabulary 512), as the tiny-* models in
../shared do, and have 8 experts with top-2 routing so that routing varies
across tokens:
  - tiny-qwen2-moe: a shared expert behind its sigmoid gate, q/k/v biases,
    norm_topk_prob false (the default), and layer 1 a dense MLP
    (mlp_only_layers), so both kinds of layer are exercised;
  - tiny-qwen3-moe: q/k head norms, head_dim 32 != hidden / heads,
    norm_topk_prob true.
Weights are drawn wider than the init (std 0.02 makes every logit nearly
equal, and greedy ties would test rounding, not the model): 2-D weights std
0.15, the routers std 0.5 (so the top-2 differ from token to token), norms
1 + 0.1 N(0, 1).
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

TRANSFORMERS_VERSION = "5.17.0"
PROMPT_TEXT = "Once upon a time, there was a little dog"
N_GREEDY = 32
BOS, EOS = 1, 2

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=BOS,
              eos_token_id=EOS, pad_token_id=0, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
              rope_parameters={"rope_type": "default", "rope_theta": 1e6})

MODELS = {
    "tiny-qwen2-moe": (Qwen2MoeConfig, Qwen2MoeForCausalLM,
                       dict(intermediate_size=96, shared_expert_intermediate_size=48, norm_topk_prob=False,
                            mlp_only_layers=[1], decoder_sparse_step=1)),
    "tiny-qwen3-moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM,
                       dict(intermediate_size=96, head_dim=32, norm_topk_prob=True, decoder_sparse_step=1,
                            mlp_only_layers=[])),
}


def make_model(cfg_cls, model_cls, extra, seed):
    cfg = cfg_cls(**COMMON, **extra)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.copy_(0.15 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model.to(torch.bfloat16)


def make(name, shared, out_root, seed):
    cfg_cls, model_cls, extra = MODELS[name]
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    model = make_model(cfg_cls, model_cls, extra, seed)
    model.save_pretrained(out)  # bf16 weights, config.json, generation_config.json
    tok_dir = os.path.join(shared, "models", "stories260K")
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    g = torch.Generator().manual_seed(seed + 1)
    prompts = [
        [BOS],
        tok.encode(PROMPT_TEXT, add_special_tokens=True).ids,
        [BOS] + torch.randint(3, 512, (47,), generator=g).tolist(),
    ]
    ref = model_cls.from_pretrained(out, dtype=torch.float32).eval()
    cases, tensors = [], {}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            tensors[f"prompt{i}.logits"] = ref(x).logits[0].float().contiguous()
            gen = ref.generate(x, do_sample=False, max_new_tokens=N_GREEDY, eos_token_id=EOS, pad_token_id=0,
                               attention_mask=torch.ones_like(x))
            cases.append({"name": f"prompt{i}", "ids": ids, "greedy": gen[0, len(ids):].tolist()})
    save_file(tensors, os.path.join(out, "logits.safetensors"))
    meta = {"model": name, "architecture": model_cls.__name__, "weights_dtype": "torch.bfloat16",
            "transformers": transformers.__version__, "torch": torch.__version__, "seed": seed, "cases": cases}
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True, help="the folder that gets tiny-qwen2-moe/ and tiny-qwen3-moe/")
    ap.add_argument("--seed", type=int, default=23)
    args = ap.parse_args()
    assert transformers.__version__ == TRANSFORMERS_VERSION, transformers.__version__
    for i, name in enumerate(MODELS):
        make(name, args.shared, args.out, args.seed + 10 * i)


if __name__ == "__main__":
    main()
