#!/usr/bin/env python3
"""Writes a Llama-family HF folder (config.json + model.safetensors, bf16)
as a GGUF bf16 file with llama.cpp's own gguf-py (the same commit's), for
paired benchmarks. convert_hf_to_gguf.py needs torch, which PyPI only has
with the CUDA libraries (GBs); the tensors here are written byte for byte
(bf16 stays bf16), with llama.cpp's names and the q/k row permutation
convert_hf_to_gguf applies. The vocab is synthetic (the same size as the
config's): llama-bench feeds random token ids and never tokenizes text.

usage: hf_to_gguf_bf16.py MODEL_DIR OUT.gguf GGUF_PY_DIR
  GGUF_PY_DIR: the gguf-py folder of the llama.cpp checkout being compared
  (its GGUFWriter, so the file is what that commit reads); needs numpy.
"""
import json
import struct
import sys

import numpy as np

gguf = None  # llama.cpp's gguf-py, imported in main() from the folder given


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = mm[base + a:base + b].view(np.uint16).reshape(info["shape"])
    return out


def permute(w, n_head):
    # convert_hf_to_gguf's LlamaModel.permute (HF's rotate-half -> GGML's interleaved rope)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    global gguf
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    sys.path.insert(0, sys.argv[3])
    import gguf as g
    gguf = g
    cfg = json.load(open(f"{src}/config.json"))
    t = read_safetensors(f"{src}/model.safetensors")
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    w = gguf.GGUFWriter(dst, "llama")
    w.add_name("random-llama-1b-shape")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(hd)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    # a synthetic SentencePiece-style vocab: <unk>, <s>, </s>, 256 byte tokens, then fillers
    V = cfg["vocab_size"]
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    toks += [f"\u2581t{i}" for i in range(V - len(toks))]
    types += [gguf.TokenType.NORMAL] * (V - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * V)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def put(name, arr):
        arr = np.ascontiguousarray(arr)
        w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)

    def f32(name, arr):  # norms: f32 as convert_hf_to_gguf writes 1-D tensors
        a = (arr.astype(np.uint32) << 16).view(np.float32)
        w.add_tensor(name, np.ascontiguousarray(a))

    put("token_embd.weight", t["model.embed_tokens.weight"])
    f32("output_norm.weight", t["model.norm.weight"])
    if "lm_head.weight" in t:
        put("output.weight", t["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        f32(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", permute(t[p + "self_attn.q_proj.weight"], nh))
        put(f"blk.{i}.attn_k.weight", permute(t[p + "self_attn.k_proj.weight"], nkv))
        put(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        f32(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
