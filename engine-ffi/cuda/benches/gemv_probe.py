# Bandwidth of bf16 GEMMs with few rows through torch (cuBLAS), on the decode shapes.
import torch, time
torch.manual_seed(0)
shapes = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]
for m in (1, 8, 64):
    tot_b, tot_t = 0, 0
    for n, k in shapes:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(5): torch.nn.functional.linear(x, w)
        torch.cuda.synchronize()
        it = 50
        t0 = time.perf_counter()
        for _ in range(it): torch.nn.functional.linear(x, w)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / it
        print(f"M={m} W {n}x{k}: {dt*1e6:.1f} us, {n*k*2/dt/1e12:.2f} TB/s")
        mult = 1 if n == 128256 else 32
        tot_b += n * k * 2 * mult; tot_t += dt * mult
    print(f"M={m}: all decode weight GEMMs {tot_t*1e3:.2f} ms -> {tot_b/tot_t/1e12:.2f} TB/s")
