#!/usr/bin/env python3
"""Independent numpy GGUF reader + Q4_1/Q8_0 dequantiser, used to cross-check
ferrite-model's `tensor_f32` (see gguf::tests::smollm2_dequant_matches_numpy).
Usage: gguf_dequant_check.py FILE.gguf TENSOR..."""
import struct, sys
import numpy as np

def main(path, names):
    b = open(path, "rb").read()
    pos = 0
    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos); pos += struct.calcsize("<" + fmt); return v[0]
    def rs():
        n = rd("Q"); nonlocal pos; s = b[pos:pos + n].decode(); pos += n; return s
    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def val(t):
        if t == 8: return rs()
        if t == 9:
            et, n = rd("I"), rd("Q"); return [val(et) for _ in range(n)]
        return rd(sizes[t])
    assert b[:4] == b"GGUF"; pos = 4
    ver, nt, nkv = rd("I"), rd("Q"), rd("Q")
    meta = {}
    for _ in range(nkv):
        k = rs(); meta[k] = val(rd("I"))
    tensors = {}
    for _ in range(nt):
        n = rs(); nd = rd("I"); shape = [rd("Q") for _ in range(nd)]; t = rd("I"); off = rd("Q")
        tensors[n] = (shape, t, off)
    align = meta.get("general.alignment", 32)
    data = (pos + align - 1) // align * align
    for name in names:
        shape, t, off = tensors[name]
        n = int(np.prod(shape)); start = data + off
        if t == 3:  # Q4_1: f16 d, f16 m, 16 bytes
            blk = np.frombuffer(b, dtype=np.uint8, count=n // 32 * 20, offset=start).reshape(-1, 20)
            d = blk[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = blk[:, 2:4].copy().view(np.float16).astype(np.float32)
            q = blk[:, 4:]
            qs = np.concatenate([q & 0xF, q >> 4], axis=1).astype(np.float32)
            w = (d * qs + m).reshape(-1)
        elif t == 8:  # Q8_0: f16 d, 32 i8
            blk = np.frombuffer(b, dtype=np.uint8, count=n // 32 * 34, offset=start).reshape(-1, 34)
            d = blk[:, 0:2].copy().view(np.float16).astype(np.float32)
            qs = blk[:, 2:].copy().view(np.int8).astype(np.float32)
            w = (d * qs).reshape(-1)
        elif t == 0:
            w = np.frombuffer(b, dtype=np.float32, count=n, offset=start)
        else:
            raise SystemExit(f"type {t} not handled")
        print(name, shape, "sum=%r" % float(w.astype(np.float64).sum()),
              "first=", [float(x) for x in w[:4]], "last=", float(w[-1]))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
