#!/usr/bin/env python3
"""Makes tests/data/quant/<format>/: small pre-quantized Hugging Face
checkpoints of one random-weight bf16 tiny Llama, and their references.

Not run by CI (the tests read the committed files). Needs a scratch venv
outside the repository (tests/data/quant/README.md has the recipe):

    /tmp/qvenv/bin/python scripts/make_quant_fixtures.py --shared /work/shared --out tests/data/quant

Each format is written as its tool writes it: compressed-tensors' own
pack_to_int32 for pack-quantized; the others from the tools' published
layouts (AutoAWQ's WQLinear_GEMM, GPTQ v1 as AutoGPTQ/GPTQModel save it,
ModelOpt's FP8 export, transformers' FineGrainedFP8). Every fixture's
reference.safetensors holds:
  prompt<i>.ids     I64 [T]     the prompt (BOS first)
  prompt<i>.logits  F32 [T, V]  logits at every position, float32
  prompt<i>.greedy  I64 [16]    greedy continuation
  dequant.<module>  F32 [N, K]  layer 0's k_proj dequantized
and for the int8/int4 formats the same logits and greedy continuation with
each quantized linear's input rounded as anvil's CPU int path rounds it
(prompt<i>.logits_a8, prompt<i>.greedy_a8: int8 per block of 32 columns) by the format's formula
computed from the weights dequantized by the format's published formula
(activations of W8A8 formats rounded to fp8 as the format says), in
float32 with transformers' LlamaForCausalLM. Where transformers itself
loads the format on the CPU, its logits are compared with those and the
largest difference goes into meta.json.
"""
import argparse
import json
import os
import shutil
import zlib

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

FP8_MAX = 448.0
PROMPTS = ["Once upon a time", "The little dog ran to the park and", "Lily wanted to"]
N_GREEDY = 16
DEQUANT_KEEP = ["model.layers.0.self_attn.k_proj"]
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ GEMM: nibble i holds column 8j + AWQ_ORDER[i]


# ------------------------------------------------------------------ base model

def base_model(seed=0):
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                # wide enough that logits spread and greedy picks are clear
                p.copy_(torch.randn_like(p) * (1.0 if "embed" in name else 1.5 / p.shape[1] ** 0.5))
    return model.to(torch.bfloat16).eval()


def linear_names(model):
    out = [f"model.layers.{i}.{l}" for i in range(model.config.num_hidden_layers) for l in LINEARS]
    return out


def calib_input_amax(model, tok):
    """max |x| of each linear's input over the prompts (for static fp8 input scales)."""
    amax = {}
    hooks = []
    m32 = model.float()
    for name, mod in m32.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def hook(m, args, name=name):
                amax[name] = max(amax.get(name, 0.0), args[0].abs().max().item())
            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        for p in PROMPTS:
            m32(torch.tensor([tok(p)]))
    for h in hooks:
        h.remove()
    model.to(torch.bfloat16)
    return amax


# ------------------------------------------------------------- quantizers (RTN)

def to_fp8(x):
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def as_i32(x64):
    x64 = x64 & 0xFFFFFFFF
    return torch.where(x64 >= 2**31, x64 - 2**32, x64).to(torch.int32)


def pack_along(q, dim, order=None):
    """int 0..15 tensor, packed 8 to an int32 along dim (element i at bits 4i;
    with order, nibble i holds element order[i])."""
    q = q.to(torch.int64)
    if dim == 0:
        q = q.t()
    r, c = q.shape
    q = q.reshape(r, c // 8, 8)
    out = torch.zeros(r, c // 8, dtype=torch.int64)
    for i in range(8):
        out |= q[:, :, order[i] if order else i] << (4 * i)
    out = as_i32(out)
    return out.t().contiguous() if dim == 0 else out


def unpack_along(p, dim, order=None):
    p = p.to(torch.int64) & 0xFFFFFFFF
    if dim == 0:
        p = p.t()
    r, c = p.shape
    out = torch.zeros(r, c, 8, dtype=torch.int64)
    for i in range(8):
        out[:, :, order[i] if order else i] = (p >> (4 * i)) & 15
    out = out.reshape(r, c * 8)
    return out.t().contiguous() if dim == 0 else out


# Each format: quantize(w f32 [N, K], module, ctx) -> (tensors, dequant f32 [N, K]);
# dequant is computed back from the stored tensors by the format's formula.

def q_modelopt_fp8(w, mod, ctx):
    s = (w.abs().max() / FP8_MAX).float()
    w8 = to_fp8(w / s)
    ins = torch.tensor(ctx["amax"][mod] / FP8_MAX, dtype=torch.float32)
    t = {"weight": w8, "weight_scale": s.reshape(()), "input_scale": ins.reshape(())}
    return t, w8.float() * t["weight_scale"]


def q_fp8_tensor(w, mod, ctx):
    t, deq = q_modelopt_fp8(w, mod, ctx)
    return t, deq


def q_fp8_block(w, mod, ctx, b=128):
    n, k = w.shape
    blocks = w.reshape(n // b, b, k // b, b)
    s = blocks.abs().amax(dim=(1, 3)) / FP8_MAX  # [N/b, K/b]
    w8 = to_fp8((blocks / s[:, None, :, None]).reshape(n, k))
    sinv = s.float()
    deq = (w8.float().reshape(n // b, b, k // b, b) * sinv[:, None, :, None]).reshape(n, k)
    return {"weight": w8, "weight_scale_inv": sinv}, deq


def q_ct_fp8(w, mod, ctx, static):
    # FP8 (static): per-tensor weights and inputs; FP8_DYNAMIC: per-channel
    # weights, per-token inputs (llm-compressor's presets)
    if static:
        s = (w.abs().max() / FP8_MAX).reshape(1).to(torch.bfloat16)
    else:
        s = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).to(torch.bfloat16)
    w8 = to_fp8(w / s.float())
    t = {"weight": w8, "weight_scale": s}
    if static:
        t["input_scale"] = torch.tensor([ctx["amax"][mod] / FP8_MAX], dtype=torch.bfloat16)
    return t, w8.float() * s.float()


def q_ct_int8(w, mod, ctx):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    s = (w.abs().amax(dim=1, keepdim=True) / 127.0).to(torch.bfloat16)
    q = torch.round(w / s.float()).clamp(-128, 127).to(torch.int8)
    t = {"weight_packed": pack_to_int32(q, 8), "weight_scale": s,
         "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64)}
    # the formula back from the packed bytes: byte i of each int32, minus 128
    p = t["weight_packed"].to(torch.int64) & 0xFFFFFFFF
    un = torch.stack([(p >> (8 * i)) & 255 for i in range(4)], dim=-1).reshape(w.shape[0], -1) - 128
    return t, un.float() * s.float()


def q_ct_int4(w, mod, ctx, g=128):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    n, k = w.shape
    wg = w.reshape(n, k // g, g)
    s = (wg.abs().amax(dim=2) * 2 / 15).to(torch.bfloat16)  # compressed-tensors' symmetric int4 range
    q = torch.round(wg / s.float()[:, :, None]).clamp(-8, 7).to(torch.int8).reshape(n, k)
    t = {"weight_packed": pack_to_int32(q, 4), "weight_scale": s,
         "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
    un = unpack_along(t["weight_packed"], 1) - 8
    deq = (un.float().reshape(n, k // g, g) * s.float()[:, :, None]).reshape(n, k)
    return t, deq


def asym_int4(wg, zmin=0):
    """per-group asymmetric int4 over the last dim: scales, zeros (zmin..15), q."""
    mx = wg.amax(dim=-1).clamp(min=0)
    mn = wg.amin(dim=-1).clamp(max=0)
    s = ((mx - mn) / 15).clamp(min=1e-8)
    z = torch.round(-mn / s).clamp(zmin, 15)
    q = torch.round(wg / s[..., None] + z[..., None]).clamp(0, 15)
    return s, z, q


def q_awq(w, mod, ctx, g=128):
    n, k = w.shape
    s, z, q = asym_int4(w.reshape(n, k // g, g))
    s = s.half()
    q = torch.round(w.reshape(n, k // g, g) / s.float()[..., None] + z[..., None]).clamp(0, 15).reshape(n, k)
    t = {"qweight": pack_along(q.t().contiguous(), 1, AWQ_ORDER),      # [K, N/8]
         "qzeros": pack_along(z.t().contiguous(), 1, AWQ_ORDER),       # [K/g, N/8]
         "scales": s.t().contiguous()}                                 # [K/g, N] f16
    qu = unpack_along(t["qweight"], 1, AWQ_ORDER)                      # [K, N]
    zu = unpack_along(t["qzeros"], 1, AWQ_ORDER)                       # [K/g, N]
    gi = torch.arange(k) // g
    deq = ((qu - zu[gi]).float() * t["scales"].float()[gi]).t().contiguous()
    return t, deq


def q_gptq(w, mod, ctx, g=128, desc_act=False, sym=True):
    n, k = w.shape
    if desc_act:
        # act order: columns quantized by a permutation (GPTQ uses the
        # Hessian's diagonal); group i holds perm[i*g:(i+1)*g]
        gen = torch.Generator().manual_seed(zlib.crc32(mod.encode()))
        perm = torch.randperm(k, generator=gen)
    else:
        perm = torch.arange(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // g).to(torch.int32)
    wp = w[:, perm].reshape(n, k // g, g)
    if sym:
        s = (wp.abs().amax(dim=-1) * 2 / 15).clamp(min=1e-8)
        z = torch.full_like(s, 8.0)
    else:
        # zeros 1..15: GPTQ v1 stores zero - 1, which has no nibble for 0
        s, z, _ = asym_int4(wp, zmin=1)
    s = s.half()
    q = torch.empty(n, k)
    sf = s.float()
    q[:, perm] = torch.round(wp / sf[..., None] + z[..., None]).clamp(0, 15).reshape(n, k)
    t = {"qweight": pack_along(q.t().contiguous(), 0),                 # [K/8, N]: along K
         "qzeros": pack_along((z - 1).t().contiguous(), 1),            # [K/g, N/8]: v1, zero - 1
         "scales": s.t().contiguous(),                                 # [K/g, N] f16
         "g_idx": g_idx}
    qu = unpack_along(t["qweight"], 0)                                 # [K, N]
    zu = unpack_along(t["qzeros"], 1) + 1                              # [K/g, N]
    gi = t["g_idx"].long()
    deq = ((qu - zu[gi]).float() * t["scales"].float()[gi]).t().contiguous()
    return t, deq


# ------------------------------------------------------------------- configs

def ct_config(fmt, weights, inputs):
    grp = {"targets": ["Linear"], "weights": weights, "input_activations": inputs, "output_activations": None,
           "format": fmt}
    return {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {"group_0": grp},
            "ignore": ["lm_head"], "quantization_status": "compressed", "kv_cache_scheme": None,
            "sparsity_config": {}, "global_compression_ratio": None, "version": "0.20.1"}


def ct_args(num_bits, typ, strategy, group_size=None, dynamic=False):
    return {"num_bits": num_bits, "type": typ, "symmetric": True, "strategy": strategy, "group_size": group_size,
            "dynamic": dynamic, "actorder": None, "block_structure": None, "observer": None if dynamic else "minmax",
            "observer_kwargs": {}}


def ct_kv_scheme():
    # llm-compressor's kv_cache_scheme for an FP8 KV cache: one static scale
    # per layer for k and one for v (k_scale, v_scale in self_attn)
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "group_size": None,
            "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax",
            "observer_kwargs": {}}


INT_NAMES = ("ct-w8a16", "ct-w4a16", "awq-gemm", "gptq", "gptq-descact")

FORMATS = {
    "modelopt-fp8": dict(q=q_modelopt_fp8, act="static",
                         config={"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": None,
                                 "exclude_modules": ["lm_head"]},
                         hf_quant={"producer": {"name": "modelopt", "version": "0.29.0"},
                                   "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None,
                                                    "exclude_modules": ["lm_head"]}},
                         how="ModelOpt's FP8 export layout, written from its spec (modelopt does not install "
                             "on a CPU-only machine)"),
    "fp8-tensor": dict(q=q_fp8_tensor, act="static",
                       config={"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]},
                       how="vLLM's serialized per-tensor fp8 (Fp8Config, activation_scheme static), from its spec"),
    "fp8-block": dict(hf_runs=True, q=q_fp8_block, act=None,
                      config={"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                              "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]},
                      how="transformers' FineGrainedFP8 layout (weight_scale_inv per 128x128 block), from its "
                          "spec; transformers loads it on the CPU by dequantizing"),
    "ct-fp8-static": dict(hf_runs=True, q=lambda w, m, c: q_ct_fp8(w, m, c, True), act="static",
                          config=ct_config("float-quantized", ct_args(8, "float", "tensor"),
                                           ct_args(8, "float", "tensor")),
                          how="compressed-tensors float-quantized as llm-compressor's FP8 preset writes it"),
    "ct-fp8-dynamic": dict(hf_runs=True, q=lambda w, m, c: q_ct_fp8(w, m, c, False), act="dynamic",
                           config=ct_config("float-quantized", ct_args(8, "float", "channel"),
                                            ct_args(8, "float", "token", dynamic=True)),
                           how="compressed-tensors float-quantized as llm-compressor's FP8_DYNAMIC preset writes it"),
    "ct-fp8-kv": dict(hf_runs=True, q=lambda w, m, c: q_ct_fp8(w, m, c, True), act="static", kv=True,
                      config=dict(ct_config("float-quantized", ct_args(8, "float", "tensor"),
                                            ct_args(8, "float", "tensor")), kv_cache_scheme=ct_kv_scheme()),
                      how="compressed-tensors float-quantized (llm-compressor's FP8 preset) with an fp8 "
                          "kv_cache_scheme: per-layer self_attn.k_scale / v_scale (f32 [1]) = max|k| / 448 "
                          "(after RoPE) and max|v| / 448 over the prompts; k_proj and v_proj times 256, q_proj "
                          "and o_proj over 256 (the same function, k and v past 448: unit scales saturate)"),
    "ct-w8a16": dict(hf_runs=True, q=q_ct_int8, act=None,
                     config=ct_config("pack-quantized", ct_args(8, "int", "channel"), None),
                     how="compressed-tensors pack-quantized int8 (W8A16 preset), packed by compressed-tensors' "
                         "pack_to_int32"),
    "ct-w4a16": dict(hf_runs=True, q=q_ct_int4, act=None,
                     config=ct_config("pack-quantized", ct_args(4, "int", "group", 128), None),
                     how="compressed-tensors pack-quantized int4 group 128 (W4A16 preset), packed by "
                         "compressed-tensors' pack_to_int32"),
    "awq-gemm": dict(hf_runs=True, q=q_awq, act=None,
                     config={"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                             "version": "gemm", "modules_to_not_convert": None},
                     how="AutoAWQ's WQLinear_GEMM layout (int4, group 128, zero points, nibble order "
                         "0 2 4 6 1 3 5 7), RTN without the activation-aware search, from its spec (autoawq does "
                         "not install here)"),
    "gptq": dict(hf_runs=True, q=q_gptq, act=None,
                 config={"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
                         "checkpoint_format": "gptq", "static_groups": False, "true_sequential": True,
                         "damp_percent": 0.01},
                 how="GPTQ v1 checkpoint layout (qweight along K, qzeros stored minus one, g_idx) as AutoGPTQ / "
                     "GPTQModel save it, RTN without the Hessian update, from its spec"),
    "gptq-descact": dict(hf_runs=True, q=lambda w, m, c: q_gptq(w, m, c, desc_act=True, sym=False), act=None,
                         config={"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True,
                                 "sym": False, "checkpoint_format": "gptq", "static_groups": False,
                                 "true_sequential": True, "damp_percent": 0.01},
                         how="as gptq, with desc_act (a random column order per weight, g_idx) and asymmetric "
                             "zero points (1..15)"),
}


# --------------------------------------------------------------- references

def fp8_qdq_rows(x, scale=None):
    """rounds x to fp8: per row (dynamic) or with one scale (static)."""
    if scale is None:
        scale = (x.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return to_fp8(x / scale).float() * scale


def int8_blocks(x, perm=None):
    """anvil's CPU int path (docs/cpu-backend.md, as llama.cpp's Q8_0): the
    row permuted by perm, rounded to int8 per block of 32 columns with
    d = max|block| / 127, q = rint(x * (1 / d)) in -127..127."""
    if perm is not None:
        x = x[..., perm]
    sh = x.shape
    xb = x.reshape(*sh[:-1], sh[-1] // 32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(xb * (1 / d)).clamp(-127, 127), torch.zeros_like(xb))
    y = (q * d).reshape(sh)
    if perm is not None:
        out = torch.empty_like(y)
        out[..., perm] = y
        y = out
    return y


def reference_model(base, deq, act, input_scales, perms=None):
    m = LlamaForCausalLM(base.config).float().eval()
    sd = {k: v.float() for k, v in base.state_dict().items()}
    for mod, w in deq.items():
        sd[mod + ".weight"] = w
    m.load_state_dict(sd)
    if act in ("static", "dynamic"):
        for name, mod in m.named_modules():
            if name in deq:
                sc = input_scales.get(name) if act == "static" else None
                mod.register_forward_pre_hook(lambda _m, a, sc=sc: (fp8_qdq_rows(a[0], sc),))
    elif act == "int8_blocks":
        for name, mod in m.named_modules():
            if name in deq:
                mod.register_forward_pre_hook(lambda _m, a, p=perms.get(name): (int8_blocks(a[0], p),))
    return m


KV_UP = 256.0  # ct-fp8-kv: k_proj, v_proj times this, q_proj, o_proj over it (exact in bf16)


def kv_scaled_model(base):
    """the same function with k and v KV_UP times larger: q.k and the
    attention output through o_proj are unchanged (RoPE is linear)."""
    import copy
    m = copy.deepcopy(base)
    with torch.no_grad():
        for layer in m.model.layers:
            a = layer.self_attn
            a.k_proj.weight.mul_(KV_UP)
            a.v_proj.weight.mul_(KV_UP)
            a.q_proj.weight.div_(KV_UP)
            a.o_proj.weight.div_(KV_UP)
    return m


def kv_cache(scales=None, amax=None):
    """a DynamicCache whose update sees each layer's k (after RoPE) and v as
    attention uses them: recorded into amax, or rounded to
    fp8(k / k_scale) * k_scale (scales[layer] = (k_scale, v_scale)) as an
    fp8 KV cache stores them"""
    from transformers import DynamicCache

    class KVCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *a, **kw):
            if amax is not None:
                ka, va = amax.get(layer_idx, (0.0, 0.0))
                amax[layer_idx] = (max(ka, key_states.abs().max().item()), max(va, value_states.abs().max().item()))
            if scales is not None:
                ks, vs = scales[layer_idx]
                key_states = to_fp8(key_states / ks).to(key_states.dtype) * ks
                value_states = to_fp8(value_states / vs).to(value_states.dtype) * vs
            return super().update(key_states, value_states, layer_idx, *a, **kw)

    return KVCache()


def logits_and_greedy(model, ids_list, cache=None):
    out = {}
    with torch.no_grad():
        for i, ids in enumerate(ids_list):
            x = torch.tensor([ids])
            out[f"prompt{i}.ids"] = x[0].to(torch.int64)
            kw = {"past_key_values": cache(), "use_cache": True} if cache else {}
            out[f"prompt{i}.logits"] = model(x, **kw).logits[0].float().contiguous()
            kw = {"past_key_values": cache()} if cache else {}
            g = model.generate(x, max_new_tokens=N_GREEDY, do_sample=False, min_new_tokens=N_GREEDY,
                               pad_token_id=0, **kw)
            out[f"prompt{i}.greedy"] = g[0, len(ids):].to(torch.int64).contiguous()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="/work/shared")
    ap.add_argument("--out", default="tests/data/quant")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    tokdir = os.path.join(args.shared, "models", "stories260K")
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(os.path.join(tokdir, "tokenizer.json"))
    tok = lambda s: tk.encode(s).ids  # noqa: E731  (BOS first, as the tokenizer's template adds it)
    ids_list = [tok(p) for p in PROMPTS]
    assert all(ids[0] == 1 for ids in ids_list), "the tokenizer must add BOS"

    base0 = base_model()
    amax0 = calib_input_amax(base0, tok)
    for name, spec in FORMATS.items():
        if args.only and name not in args.only:
            continue
        base, amax = base0, amax0
        if spec.get("kv"):
            base = kv_scaled_model(base0)
            amax = calib_input_amax(base, tok)
        ctx = {"amax": amax}
        base_sd = base.state_dict()
        d = os.path.join(args.out, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        tensors, deq, input_scales = {}, {}, {}
        for k, v in base_sd.items():
            mod = k[: -len(".weight")] if k.endswith(".weight") else None
            if mod in linear_names(base):
                t, dq = spec["q"](v.float(), mod, ctx)
                for tn, tv in t.items():
                    tensors[f"{mod}.{tn}"] = tv.contiguous()
                deq[mod] = dq.float()
                if "input_scale" in t:
                    input_scales[mod] = t["input_scale"].float().reshape(())
            else:
                tensors[k] = v.contiguous()
        kv_scales, cache = None, None
        if spec.get("kv"):
            # max |k| and |v| as attention sees them in the reference model (W8A8)
            kv_amax = {}
            probe = reference_model(base, deq, spec["act"], input_scales)
            with torch.no_grad():
                for ids in ids_list:
                    probe(torch.tensor([ids]), past_key_values=kv_cache(amax=kv_amax), use_cache=True)
            kv_scales = {}
            for layer, (ka, va) in sorted(kv_amax.items()):
                k_s = torch.tensor([ka / FP8_MAX], dtype=torch.float32)
                v_s = torch.tensor([va / FP8_MAX], dtype=torch.float32)
                tensors[f"model.layers.{layer}.self_attn.k_scale"] = k_s
                tensors[f"model.layers.{layer}.self_attn.v_scale"] = v_s
                kv_scales[layer] = (k_s.item(), v_s.item())
            cache = lambda: kv_cache(scales=kv_scales)  # noqa: E731
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        cfg = base.config.to_dict()
        cfg["quantization_config"] = spec["config"]
        cfg["dtype"] = "bfloat16"
        cfg["architectures"] = ["LlamaForCausalLM"]  # what save_pretrained writes
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        if "hf_quant" in spec:
            with open(os.path.join(d, "hf_quant_config.json"), "w") as f:
                json.dump(spec["hf_quant"], f, indent=2)
        for fn in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]:
            shutil.copy(os.path.join(tokdir, fn), os.path.join(d, fn))
            os.chmod(os.path.join(d, fn), 0o644)

        ref_model = reference_model(base, deq, spec["act"], input_scales)
        ref = logits_and_greedy(ref_model, ids_list, cache)
        if kv_scales is not None:
            # the same with unit scales (k and v saturating at 448): what the
            # scales save
            unit = {layer: (1.0, 1.0) for layer in kv_scales}
            u = logits_and_greedy(ref_model, ids_list, lambda: kv_cache(scales=unit))
            for k, v in u.items():
                if not k.endswith(".ids"):
                    ref[k.replace(".logits", ".logits_unit_kv").replace(".greedy", ".greedy_unit_kv")] = v
        for mod in DEQUANT_KEEP:
            ref[f"dequant.{mod}"] = deq[mod].contiguous()
        if name in INT_NAMES:
            # the same with the activations rounded as anvil's CPU int path
            # rounds them: a second, tight reference for that backend
            perms = {mod: torch.argsort(tensors[mod + ".g_idx"].long(), stable=True)
                     for mod in deq if mod + ".g_idx" in tensors
                     and not torch.equal(tensors[mod + ".g_idx"].long(), torch.arange(deq[mod].shape[1]) // 128)}
            a8 = logits_and_greedy(reference_model(base, deq, "int8_blocks", {}, perms), ids_list)
            for k, v in a8.items():
                if not k.endswith(".ids"):
                    ref[k.replace(".logits", ".logits_a8").replace(".greedy", ".greedy_a8")] = v
        save_file(ref, os.path.join(d, "reference.safetensors"))

        meta = {"how": spec["how"], "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "reference": "float32 LlamaForCausalLM over the weights dequantized by the format's formula"
                             + ({"static": ", inputs of quantized linears rounded to fp8 with input_scale",
                                 "dynamic": ", inputs of quantized linears rounded to fp8 per token"}
                                .get(spec["act"], ""))
                             + (", k and v rounded to fp8(k / k_scale) * k_scale where attention uses them"
                                if kv_scales is not None else "")}
        if kv_scales is not None:
            meta["kv_scales"] = {str(layer): list(v) for layer, v in kv_scales.items()}
        # transformers' own loading, where it runs the format on the CPU
        # (it reads modelopt and per-tensor fp8 configs without applying
        # them: their weights would load as raw fp8 values)
        if not spec.get("hf_runs"):
            meta["transformers_loads"] = False
            meta["transformers_error"] = spec.get("hf_note", "transformers does not run this format on the CPU")
        else:
          try:
            # AWQ and GPTQ run through gptqmodel's torch kernel (CPU)
            hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, device_map="cpu").eval()
            with torch.no_grad():
                diffs = [(hf(torch.tensor([ids])).logits[0].float() - ref[f"prompt{i}.logits"]).abs().max().item()
                         for i, ids in enumerate(ids_list)]
                if kv_scales is not None:  # whether transformers applied the KV scheme at all
                    meta["transformers_max_abs_logit_diff_unit_kv"] = max(
                        (hf(torch.tensor([ids])).logits[0].float() - ref[f"prompt{i}.logits_unit_kv"]).abs().max()
                        .item() for i, ids in enumerate(ids_list))
                same = all(torch.equal(hf.generate(torch.tensor([ids]), max_new_tokens=N_GREEDY, do_sample=False,
                                                   min_new_tokens=N_GREEDY, pad_token_id=0)[0, len(ids):],
                                       ref[f"prompt{i}.greedy"]) for i, ids in enumerate(ids_list))
            meta["transformers_loads"] = True
            meta["transformers_module"] = type(hf.model.layers[0].self_attn.k_proj).__module__
            for pkg in ["compressed_tensors", "gptqmodel", "optimum"]:
                try:
                    meta[pkg] = __import__(pkg).__version__
                except Exception:  # noqa: BLE001  (not installed: not used for this format)
                    pass
            meta["transformers_max_abs_logit_diff"] = max(diffs)
            meta["transformers_greedy_identical"] = same
          except Exception as e:  # noqa: BLE001  (recorded: which formats transformers cannot run here)
            meta["transformers_loads"] = False
            meta["transformers_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(name, json.dumps({k: meta[k] for k in meta if k.startswith("transformers_")}))


if __name__ == "__main__":
    main()
