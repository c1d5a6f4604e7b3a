"""PyTorch + transformers baseline for docs/benchmarks/cuda.md, same shapes as cuda_bench:
Llama-3.1-8B config, random bf16 weights on the GPU, greedy, ignore EOS, default (dynamic)
KV cache. A first run with cache_implementation="static" spent 228 ms per token at batch 1:
transformers 5 compiles the static-cache forward, and that compile did not finish warming
inside the lease, so the eager dynamic cache is what is measured.

    python3 torch_baseline.py [static] [decode] [batch:BS:ISL:OSL]...

static: the following sections use cache_implementation="static" with disable_compile=True
(a static KV cache, eager: the automatic compile is what did not fit the lease).

decode: batch 1, 128-token prompt, 256 new tokens; prints the mean inter-token latency.
batch:BS:ISL:OSL: one generate() call over BS prompts; prints output tokens/s.
Eager mode (no torch.compile): compile time would not fit the device lease.
"""
import importlib
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def model():
    cfg = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, eos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    return m.eval()


STATIC = {}


def gen(m, bs, isl, osl):
    ids = torch.randint(1000, 120000, (bs, isl), device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=osl,
                         min_new_tokens=osl, do_sample=False, **STATIC)
    torch.cuda.synchronize()
    el = time.perf_counter() - t0
    assert out.shape[1] == isl + osl, out.shape
    return el


def main():
    print(f"torch {torch.__version__} transformers {transformers.__version__} on {torch.cuda.get_device_name()}")
    m = model()
    gen(m, 1, 16, 8)  # warm-up
    for w in sys.argv[1:]:
        if w == "static":
            STATIC.update(cache_implementation="static")
            if hasattr(transformers.GenerationConfig(), "disable_compile"):
                STATIC.update(disable_compile=True)
            else:
                importlib.import_module("torch._dynamo").config.disable = True
            gen(m, 1, 16, 8)  # warm-up of the static path
            print("static KV cache, no compile")
        elif w == "decode":
            t_pref = gen(m, 1, 128, 1)
            t = gen(m, 1, 128, 256)
            itl = (t - t_pref) / 255
            print(f"torch decode batch 1: ITL {itl*1e3:.2f} ms -> {1/itl:.1f} tok/s")
        elif w.startswith("batch:"):
            _, bs, isl, osl = w.split(":")
            bs, isl, osl = int(bs), int(isl), int(osl)
            t = gen(m, bs, isl, osl)
            print(f"torch batch {bs} x {isl} in / {osl} out: {t:.1f} s -> {bs*osl/t:.0f} output tok/s, "
                  f"{bs*(isl+osl)/t:.0f} total tok/s")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
