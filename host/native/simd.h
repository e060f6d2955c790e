/* Vector clones of the core's per-record loops: on x86-64 the compiler emits each marked function three
 * times, for AVX-512 (x86-64-v4), AVX2 and the baseline, and the loader picks one by the CPU (an ifunc);
 * elsewhere the mark is empty and the baseline alone is built.  All clones compute the same bits: the
 * marked loops use only exact integer arithmetic and IEEE operations in a fixed order (no
 * reassociation, no contraction). */
#ifndef DPFPGA_SIMD_H
#define DPFPGA_SIMD_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define DPFPGA_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define DPFPGA_VECTOR_CLONES
#endif

#endif
