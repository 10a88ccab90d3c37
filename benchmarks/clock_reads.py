"""What two clock reads cost inside a call, which the adaptive limiter pays and the bulkhead
does not: a C loop of ~100 ns of dependent loads (a stand-in for the interpreter's work
around a guarded call) with two reads of each clock added, best of 3000 runs of 2000
iterations (the best filters out preemption on a shared machine). Raw ``rdtsc`` is there
for scale: unordered, it overlaps the surrounding work, where the vDSO's precise read
orders itself (``lfence``/``rdtscp``). Needs a C compiler:

    .venv/bin/python benchmarks/clock_reads.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <stdio.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define TICKS() __rdtsc()
#else
#define TICKS() 0ULL
#endif

static unsigned long long table[4096];

static unsigned long long ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000ULL + t.tv_nsec;
}

#define WORK for (int k = 0; k < 40; k++) s = table[(s + k) & 4095] + s * 3;
#define N 2000
#define TIME(slot, body) do { unsigned long long a = ns(); \
    for (int i = 0; i < N; i++) { body } \
    double t = (double)(ns() - a) / N; if (t < best[slot]) best[slot] = t; } while (0)

int main(void) {
    struct timespec ts;
    unsigned long long s = 1;
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int i = 0; i < 4096; i++) table[i] = i * 2654435761u;
    for (int r = 0; r < 3000; r++) {
        TIME(0, WORK);
        TIME(1, clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); s += ts.tv_nsec; WORK
                clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); s += ts.tv_nsec;);
        TIME(2, clock_gettime(CLOCK_MONOTONIC, &ts); s += ts.tv_nsec; WORK
                clock_gettime(CLOCK_MONOTONIC, &ts); s += ts.tv_nsec;);
        TIME(3, s += TICKS(); WORK s += TICKS(););
    }
    printf("work alone %.1f ns; added by two reads: CLOCK_MONOTONIC_COARSE %.1f ns, "
           "CLOCK_MONOTONIC %.1f ns, raw rdtsc %.1f ns\n",
           best[0], best[1] - best[0], best[2] - best[0], best[3] - best[0]);
    return s == 1;  /* keeps the work */
}
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "clock_reads.c"), os.path.join(tmp, "clock_reads")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", exe, src], check=True)
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2):
            subprocess.run([exe], check=True)


if __name__ == "__main__":
    main()
