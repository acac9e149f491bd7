#!/usr/bin/env python3
"""Makes tests/data/models/tiny-deepseek-v2-lite/ and tiny-deepseek-v2/:
random-weight DeepseekV2ForCausalLM checkpoints (transformers' own
implementation, model_type deepseek_v2, no remote code) and their Hugging
Face goldens, in the format of ../shared/golden/models/<name>/ (cases.json
with ids and greedy continuations; logits.safetensors with prompt<i>.logits,
float32 [len(ids), vocab], computed in float32 from the stored bf16
weights).

Not run by CI (the tests read the committed files). Needs a scratch venv
outside the repository with the pinned transformers:

    python3 -m venv /tmp/ds-venv
    /tmp/ds-venv/bin/pip install torch transformers==5.17.0 tokenizers==0.23.2
    /tmp/ds-venv/bin/python scripts/make_deepseek_models.py --shared /work/shared --out tests/data/models

Both share stories260K's tokenizer (vocabulary 512) and have multi-head
latent attention (kv_lora_rank 32, qk_nope_head_dim 16, qk_rope_head_dim 8,
v_head_dim 24: every width different, so a swapped one cannot pass), YaRN
RoPE (factor 4 over original_max_position_embeddings 64, so the ramp
between interpolated and extrapolated frequencies is inside the 4 rotated
pairs), layer 0 dense (first_k_dense_replace 1) and 8 routed experts:
  - tiny-deepseek-v2-lite: as DeepSeek-V2-Lite: no q_lora (plain q_proj),
    topk_method greedy, top-2, 2 shared experts, routed_scaling_factor 1,
    mscale = mscale_all_dim (cos and sin unscaled, the softmax scale times
    mscale^2);
  - tiny-deepseek-v2: as DeepSeek-V2: q_lora_rank 48 (q_a_proj, its norm,
    q_b_proj), topk_method group_limited_greedy over 4 groups keeping 2,
    top-3, 1 shared expert, routed_scaling_factor 2.5, mscale 1 !=
    mscale_all_dim 0.8 (cos and sin times an attention factor != 1).
Weights are drawn wider than the init, as in make_moe_models.py: 2-D and
3-D weights std 0.15, the routers std 0.5, norms 1 + 0.1 N(0, 1).
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

TRANSFORMERS_VERSION = "5.17.0"
PROMPT_TEXT = "Once upon a time, there was a little dog"
N_GREEDY = 32
BOS, EOS = 1, 2

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=BOS,
              eos_token_id=EOS, pad_token_id=0, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
              v_head_dim=24, n_routed_experts=8, moe_intermediate_size=32, first_k_dense_replace=1,
              norm_topk_prob=False)


def yarn(mscale, mscale_all_dim):
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": mscale, "mscale_all_dim": mscale_all_dim}


MODELS = {
    "tiny-deepseek-v2-lite": dict(q_lora_rank=None, topk_method="greedy", n_group=1, topk_group=1,
                                  num_experts_per_tok=2, n_shared_experts=2, routed_scaling_factor=1.0,
                                  rope_parameters=yarn(0.707, 0.707)),
    "tiny-deepseek-v2": dict(q_lora_rank=48, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                             num_experts_per_tok=3, n_shared_experts=1, routed_scaling_factor=2.5,
                             rope_parameters=yarn(1.0, 0.8)),
}


def make_model(extra, seed):
    cfg = DeepseekV2Config(**COMMON, **extra)
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(cfg)
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
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    model = make_model(MODELS[name], seed)
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
    ref = DeepseekV2ForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    cases, tensors = [], {}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            tensors[f"prompt{i}.logits"] = ref(x).logits[0].float().contiguous()
            gen = ref.generate(x, do_sample=False, max_new_tokens=N_GREEDY, eos_token_id=EOS, pad_token_id=0,
                               attention_mask=torch.ones_like(x))
            cases.append({"name": f"prompt{i}", "ids": ids, "greedy": gen[0, len(ids):].tolist()})
    save_file(tensors, os.path.join(out, "logits.safetensors"))
    meta = {"model": name, "architecture": "DeepseekV2ForCausalLM", "weights_dtype": "torch.bfloat16",
            "transformers": transformers.__version__, "torch": torch.__version__, "seed": seed, "cases": cases}
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", required=True)
    ap.add_argument("--out", required=True, help="the folder that gets tiny-deepseek-v2-lite/ and tiny-deepseek-v2/")
    ap.add_argument("--seed", type=int, default=41)
    args = ap.parse_args()
    assert transformers.__version__ == TRANSFORMERS_VERSION, transformers.__version__
    for i, name in enumerate(MODELS):
        make(name, args.shared, args.out, args.seed + 10 * i)


if __name__ == "__main__":
    main()
