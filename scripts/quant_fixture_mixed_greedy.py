#!/usr/bin/env python3
"""Greedy continuations of the int fixtures (tests/data/quant) under mixed
arithmetic: the prompt's forward with or without the int8 activation
rounding of the CPU's int path (a8) and the one-token steps with or without
it, as CUDA's routing mixes them (the tensor-core GEMV rounds, the SIMT
GEMV and the dequantizing path do not). PyTorch, the fixtures' own
reference models (scripts/make_quant_fixtures.py). Prints, per prompt, the
stored greedy and greedy_a8 and the two mixed continuations.

    /tmp/qvenv/bin/python scripts/quant_fixture_mixed_greedy.py ct-w8a16 awq-gemm gptq-descact

Not run by CI (needs the fixture generator's venv: tests/data/quant/README.md).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import torch  # noqa: E402
import make_quant_fixtures as mq  # noqa: E402
from tokenizers import Tokenizer
from safetensors.torch import load_file

tk = Tokenizer.from_file(os.path.join(os.environ.get("ANVIL_SHARED_DIR", "/work/shared"), "models/stories260K/tokenizer.json"))
ids_list = [tk.encode(p).ids for p in mq.PROMPTS]
base = mq.base_model()
ctx = {"amax": {}}
MODE = {"a8": False}

def run(name):
    spec = mq.FORMATS[name]
    deq, tensors = {}, {}
    for k, v in base.state_dict().items():
        mod = k[:-len(".weight")] if k.endswith(".weight") else None
        if mod in mq.linear_names(base):
            t, dq = spec["q"](v.float(), mod, ctx)
            for tn, tv in t.items():
                tensors[f"{mod}.{tn}"] = tv
            deq[mod] = dq.float()
    perms = {mod: torch.argsort(tensors[mod + ".g_idx"].long(), stable=True)
             for mod in deq if mod + ".g_idx" in tensors
             and not torch.equal(tensors[mod + ".g_idx"].long(), torch.arange(deq[mod].shape[1]) // 128)}
    m = mq.reference_model(base, deq, "none", {})
    for n, mod in m.named_modules():
        if n in deq:
            mod.register_forward_pre_hook(
                lambda _m, a, p=perms.get(n): (mq.int8_blocks(a[0], p),) if MODE["a8"] else None)
    ref = load_file(os.path.join(ROOT, "tests/data/quant", name, "reference.safetensors"))
    for i, ids in enumerate(ids_list):
        res = {}
        for pre_a8, step_a8 in [(0, 0), (1, 1), (0, 1), (1, 0)]:
            with torch.no_grad():
                MODE["a8"] = bool(pre_a8)
                out = m(torch.tensor([ids]), use_cache=True)
                pkv = out.past_key_values
                tok = int(out.logits[0, -1].argmax())
                seq = [tok]
                MODE["a8"] = bool(step_a8)
                for j in range(mq.N_GREEDY - 1):
                    out = m(torch.tensor([[tok]]), past_key_values=pkv, use_cache=True)
                    pkv = out.past_key_values
                    tok = int(out.logits[0, -1].argmax())
                    seq.append(tok)
            res[(pre_a8, step_a8)] = seq
        g = ref[f"prompt{i}.greedy"].tolist(); ga = ref[f"prompt{i}.greedy_a8"].tolist()
        print(f"{name} prompt {i} (n={len(ids)}): ref greedy == sim f/f {res[(0,0)] == g}, ref greedy_a8 == sim a8/a8 {res[(1,1)] == ga}")
        print("   greedy   ", g)
        print("   greedy_a8", ga)
        print("   pre f  step a8", res[(0, 1)])
        print("   pre a8 step f ", res[(1, 0)])
    MODE["a8"] = False

if __name__ == "__main__":
    for name in sys.argv[1:]:
        run(name)
