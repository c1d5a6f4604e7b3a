#!/usr/bin/env python3
"""llama.cpp baseline for the ferrite-cpu bench example: same model, same shapes.

For each batch size B: prefill B random prompts of P tokens in one llama_decode call (each its
own sequence), then G decode steps of one token per sequence (greedy argmax), timing both.

    pip install llama-cpp-python numpy
    python3 engine-ffi/cpu/benches/llama_cpp_baseline.py --model PATH.gguf \
        [--prompt 128] [--gen 32] [--batches 1,8,32] [--threads 2]
"""
import argparse
import ctypes
import random
import time

import llama_cpp as L
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    max_b = max(batches)

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    print(f"llama-cpp-python {L.__version__}, threads {a.threads}")
    print("| batch | prompt | prefill tok/s | decode steps | decode tok/s | ms/step |")
    print("|---|---|---|---|---|---|")
    rng = random.Random(1)
    for b in batches:
        cp = L.llama_context_default_params()
        cp.n_ctx = b * (a.prompt + a.gen + 16)
        cp.n_batch = b * a.prompt
        cp.n_ubatch = min(512, b * a.prompt)
        cp.n_seq_max = b
        cp.kv_unified = True
        cp.n_threads = a.threads
        cp.n_threads_batch = a.threads
        ctx = L.llama_init_from_model(model, cp)
        batch = L.llama_batch_init(b * a.prompt, 0, 1)

        def submit(items):
            # items: list of (token, pos, seq, want_logits)
            batch.n_tokens = len(items)
            for i, (tok, pos, seq, lg) in enumerate(items):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1 if lg else 0
            rc = L.llama_decode(ctx, batch)
            assert rc == 0, f"llama_decode returned {rc}"

        def next_tokens(idx):
            # idx: batch positions whose logits were requested
            out = []
            for i in idx:
                p = L.llama_get_logits_ith(ctx, i)
                arr = np.ctypeslib.as_array(p, shape=(n_vocab,))
                out.append(int(arr.argmax()))
            return out

        prompts = [[rng.randrange(n_vocab) for _ in range(a.prompt)] for _ in range(b)]
        items = [(t, p, s, p == a.prompt - 1) for s in range(b) for p, t in enumerate(prompts[s])]
        t0 = time.perf_counter()
        # llama.cpp splits the batch into micro-batches of n_ubatch itself.
        submit(items)
        toks = next_tokens([s * a.prompt + a.prompt - 1 for s in range(b)])
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(a.gen):
            submit([(toks[s], a.prompt + step, s, True) for s in range(b)])
            toks = next_tokens(range(b))
        decode = time.perf_counter() - t0
        print(
            f"| {b} | {a.prompt} | {b * a.prompt / prefill:.1f} | {a.gen} | "
            f"{b * a.gen / decode:.1f} | {decode * 1000 / a.gen:.2f} |"
        )
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
