"""How often does the Lanczos sigma_1 of ``spectral_norm`` miss the exact value, on many random matrices?

For each shape, N Gaussian matrices (seeded; random matrices have the smallest gaps at the top of the spectrum,
the hard case for a Krylov method) go through the CPU path of ``weights.top_singular`` and are compared with
the float64 ``torch.linalg.matrix_norm(ord=2)``. Prints, per shape: the largest relative error, the count above
1e-6 and above 1e-5 (the documented accuracy), and the count that took the exact-SVD fallback. A miss above 1e-5
means the start vector held almost none of the top singular vector, so Lanczos settled on sigma_2 first: its
error is then the relative gap (sigma_1 - sigma_2) / sigma_1.
Run: OMP_NUM_THREADS=1 python benchmarks/spectral_accuracy.py --n 200
"""
from __future__ import annotations

import argparse

import torch

from plasticity_core.metrics.weights import top_singular


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="matrices per shape")
    ap.add_argument("--shapes", nargs="+", default=["256x256", "512x512", "1536x384", "1024x256"])
    args = ap.parse_args(argv)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} n={args.n} per shape")
    print(f"{'shape':>10s} {'max rel err':>12s} {'>1e-6':>6s} {'>1e-5':>6s} {'fallback':>8s}  misses (rel err, rel gap)")
    out = []
    for shape in args.shapes:
        m, n = (int(s) for s in shape.split("x"))
        g = torch.Generator().manual_seed(m * 7919 + n)
        errs, misses, slow_count = [], [], 0
        for _ in range(args.n):
            w = torch.randn(m, n, generator=g) / n ** 0.5
            s = torch.linalg.svdvals(w.double())
            top, slow = top_singular(w[None])
            rel = abs(float(top[0]) / float(s[0]) - 1)
            errs.append(rel)
            slow_count += int(slow.sum())
            if rel > 1e-5:
                misses.append((rel, float((s[0] - s[1]) / s[0])))
        row = {"shape": shape, "n": args.n, "max": max(errs), "above_1e-6": sum(e > 1e-6 for e in errs),
               "above_1e-5": len(misses), "fallback": slow_count, "misses": misses}
        out.append(row)
        print(f"{shape:>10s} {row['max']:12.1e} {row['above_1e-6']:6d} {row['above_1e-5']:6d} {slow_count:8d}  "
              + ", ".join(f"({a:.1e}, {b:.1e})" for a, b in misses), flush=True)
    return out


if __name__ == "__main__":
    main()
