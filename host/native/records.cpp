/* The per-pair kernels (records.h): the portable build first, the specification, then the
 * AVX-512 build, then the choice between them. */
#include "records.h"

#include "simd.h"
#include "dpfpga/wire.h"

#include <algorithm>
#include <atomic>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DPFPGA_HAVE_AVX512_BUILD 1
/* GCC 12's AVX-512 headers start some intrinsics from a self-initialized "undefined" vector, which
 * -Wmaybe-uninitialized reports wherever they are inlined (GCC bug 105593, fixed in GCC 13): a warning
 * about the header's own lines, silenced for them alone. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace dpfpga {
namespace records {

namespace rec = wire::input_record;

namespace {

// ---- portable ----------------------------------------------------------------------------------------

/* floor(v) for v inside the coord format (|v| < 2^31): truncation toward zero, one less for a negative
 * non-integer (std::floor is a libm call without SSE4.1).  In a scalar loop GCC makes the correction a
 * branch, which mispredicts half the time: it belongs in vectorized loops (given_map). */
inline double floor_inside(double v)
{
  const double t = double(int32_t(v));
  return t - double(t > v);
}

/* One pair's word; `bad`: a component outside the format; `close`: u below x_min. */
inline uint64_t encode_one(double vx, double vy, double vz, int32_t type, const Consts &c, int &bad, int &close)
{
  auto clamp = [&c](double v) {
    const double a = v > c.lo ? v : c.lo;
    return a < c.top ? a : c.top;
  };
  const double yx = vx * c.scale + 0.5, yy = vy * c.scale + 0.5, yz = vz * c.scale + 0.5;
  const double cx = clamp(yx), cy = clamp(yy), cz = clamp(yz);
  bad = int(cx != yx) | int(cy != yy) | int(cz != yz);
  const double fx = floor_inside(cx), fy = floor_inside(cy), fz = floor_inside(cz);
  close = int((fx * fx + fy * fy) + fz * fz < c.x_min);
  return rec::KIND_BITS | rec::TYPE.put(uint64_t(type)) | rec::DX.put(uint64_t(int64_t(int32_t(fx)))) |
         rec::DY.put(uint64_t(int64_t(int32_t(fy)))) | rec::DZ.put(uint64_t(int64_t(int32_t(fz))));
}

/* A map over structure of arrays, which the compiler vectorizes (simd.h: cloned for AVX-512 and AVX2). */
DPFPGA_VECTOR_CLONES void given_map(size_t n, const double *dx, const double *dy, const double *dz,
                                    const int32_t *type, const Consts &c, uint64_t *out, int &any_bad, size_t &close)
{
  int bad = 0;
  size_t cl = 0;
  for (size_t k = 0; k < n; k++) {
    int b, q;
    out[k] = encode_one(dx[k], dy[k], dz[k], type[k], c, b, q);
    bad |= b;
    cl += size_t(q & (b ^ 1));
  }
  any_bad = bad, close = cl;
}

/* In blocks: the candidates inside rcut kept without a branch per candidate, whose outcome a CPU cannot
 * predict (each is written, and the count advances when it is inside), then the kept ones encoded by
 * the vectorized map. */
template <typename Index>
Found listed_portable(int64_t i, const Index *cand, size_t n, const double *x, double rc2, const Consts &c,
                      uint64_t *out, int64_t *nbr, const double *shifts)
{
  constexpr size_t BLOCK = 64;
  double bx[BLOCK], by[BLOCK], bz[BLOCK];
  int32_t bt[BLOCK];
  const double xi = x[3 * i], yi = x[3 * i + 1], zi = x[3 * i + 2];
  Found f;
  for (size_t k0 = 0; k0 < n; k0 += BLOCK) {
    const size_t k1 = std::min(n, k0 + BLOCK);
    size_t m = 0;
    bool self = false;
    for (size_t k = k0; k < k1; k++) {
      const int64_t j = shifts ? int64_t(cand[k]) & ATOM_MASK : int64_t(cand[k]);
      double vx = x[3 * j] - xi, vy = x[3 * j + 1] - yi, vz = x[3 * j + 2] - zi;
      if (shifts) {
        const double *sh = shifts + 4 * (uint64_t(int64_t(cand[k])) >> IMAGE_SHIFT);
        vx = vx + sh[0], vy = vy + sh[1], vz = vz + sh[2];
      } else {
        self |= j == i;
      }
      nbr[f.kept + m] = j, bx[m] = vx, by[m] = vy, bz[m] = vz, bt[m] = c.types[j];
      m += (vx * vx + vy * vy) + vz * vz < rc2;
    }
    int bad = 0;
    size_t close = 0;
    given_map(m, bx, by, bz, bt, c, out + f.kept, bad, close);
    f.kept += m, f.close += close, f.bad |= bad != 0, f.self |= self;
  }
  return f;
}

/* Each candidate written, the count advanced when it is kept: no branch per candidate. */
size_t images_portable(size_t n, const double *px, const double *py, const double *pz, const double *sx,
                       const double *sy, const double *sz, const int64_t *j, const int64_t *home, const double *pi,
                       double rc2, int64_t centre, int64_t *oj, double *ox, double *oy, double *oz)
{
  size_t m = 0;
  for (size_t q = 0; q < n; q++) {
    const double vx = (px[q] - pi[0]) + sx[q], vy = (py[q] - pi[1]) + sy[q], vz = (pz[q] - pi[2]) + sz[q];
    oj[m] = j[q], ox[m] = vx, oy[m] = vy, oz[m] = vz;
    m += size_t(((vx * vx + vy * vy) + vz * vz < rc2) & (home[q] != centre));
  }
  return m;
}

/* w += sum over one centre's n records of r_ij (x) dE/dr_ij.  The fields go to int32 arrays first
 * (|d| <= 2^17, |g| <= 2^19), so that the products are widening int32 x int32 -> int64 ones, which the
 * compiler vectorizes (simd.h); each is below 2^37, their sum over n < 2^10 records (the COUNT
 * field) far inside int64. */
DPFPGA_VECTOR_CLONES void virial_portable(size_t n, const uint64_t *in, const uint64_t *out, int64_t *w9)
{
  constexpr size_t MAX = size_t(1) << wire::COUNT_BITS;
  int32_t d[3][MAX], g[3][MAX];
  for (size_t q = 0; q < n; q++) {
    d[0][q] = int32_t(rec::DX.get_signed(in[q]));
    d[1][q] = int32_t(rec::DY.get_signed(in[q]));
    d[2][q] = int32_t(rec::DZ.get_signed(in[q]));
    g[0][q] = int32_t(wire::output_record::DEDX.get_signed(out[q]));
    g[1][q] = int32_t(wire::output_record::DEDY.get_signed(out[q]));
    g[2][q] = int32_t(wire::output_record::DEDZ.get_signed(out[q]));
  }
  for (int x = 0; x < 3; x++)
    for (int y = 0; y < 3; y++) {
      int64_t s = 0;
      for (size_t q = 0; q < n; q++) s += int64_t(d[x][q]) * int64_t(g[y][q]);
      w9[3 * x + y] += s;
    }
}

/* Plain int64 arithmetic, three components per atom. */
void scatter_forces_portable(int64_t centre, size_t n, const uint64_t *out, const int64_t *nbr, int64_t *forces)
{
  namespace o = wire::output_record;
  int64_t fi[3] = {};
  for (size_t q = 0; q < n; q++) {
    const int64_t g[3] = {o::DEDX.get_signed(out[q]), o::DEDY.get_signed(out[q]), o::DEDZ.get_signed(out[q])};
    int64_t *fj = forces + 3 * nbr[q];
    for (int x = 0; x < 3; x++) fi[x] += g[x], fj[x] -= g[x];
  }
  for (int x = 0; x < 3; x++) forces[3 * centre + x] += fi[x];
}

// ---- AVX-512: 8 candidates per step ---------------------------------------------------------------

#ifdef DPFPGA_HAVE_AVX512_BUILD
#define DPFPGA_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl")))

/* The words of 8 pairs (r_ij: vx, vy, vz; |r_ij|^2: r2; types t), encode_one's arithmetic for the lanes
 * of `mask`: q = floor(v * scale + 0.5), clamped first where a kept pair may leave the format
 * (encode_one's clamp: max(y, lo) is y > lo ? y : lo, lo for a NaN; min(a, top) is a < top ? a : top).
 * CHECK_RANGE false: every pair inside rcut fits the coord format (Consts::range_fits), so the clamp and
 * its test, which would change nothing for a kept lane, are left out. */
struct Encoder8 {
  __m512d scale, half, lo, top, x_min, r2_near;
  __m512i coord, kind;

  DPFPGA_AVX512 explicit Encoder8(const Consts &c)
      : scale(_mm512_set1_pd(c.scale)), half(_mm512_set1_pd(0.5)), lo(_mm512_set1_pd(c.lo)),
        top(_mm512_set1_pd(c.top)), x_min(_mm512_set1_pd(c.x_min)), r2_near(_mm512_set1_pd(c.r2_near)),
        coord(_mm512_set1_epi64(int64_t(rec::DX.mask()))), kind(_mm512_set1_epi64(int64_t(rec::KIND_BITS)))
  {
    static_assert(rec::DX.bits == rec::DY.bits && rec::DX.bits == rec::DZ.bits && rec::DX.shift == 0,
                  "one coord format, x in the low bits");
  }

  template <bool CHECK_RANGE>
  DPFPGA_AVX512 __m512i words(__m512d vx, __m512d vy, __m512d vz, __m512d r2, __m512i t, __mmask8 mask,
                              unsigned &bad, size_t &close) const
  {
    __m512d qx = _mm512_add_pd(_mm512_mul_pd(vx, scale), half), qy = _mm512_add_pd(_mm512_mul_pd(vy, scale), half);
    __m512d qz = _mm512_add_pd(_mm512_mul_pd(vz, scale), half);
    __mmask8 out_of_range = 0;
    if (CHECK_RANGE) {
      const __m512d cx = _mm512_min_pd(_mm512_max_pd(qx, lo), top), cy = _mm512_min_pd(_mm512_max_pd(qy, lo), top);
      const __m512d cz = _mm512_min_pd(_mm512_max_pd(qz, lo), top);
      out_of_range = _mm512_mask_cmp_pd_mask(mask, cx, qx, _CMP_NEQ_UQ) |
                     _mm512_mask_cmp_pd_mask(mask, cy, qy, _CMP_NEQ_UQ) |
                     _mm512_mask_cmp_pd_mask(mask, cz, qz, _CMP_NEQ_UQ);
      qx = cx, qy = cy, qz = cz;
    }
    constexpr int FLOOR = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    qx = _mm512_roundscale_pd(qx, FLOOR), qy = _mm512_roundscale_pd(qy, FLOOR), qz = _mm512_roundscale_pd(qz, FLOOR);
    bad |= out_of_range;
    // u only where r2 says it may be below x_min (Consts::r2_near): rarely, a branch that predicts well.
    if (const __mmask8 near = _mm512_mask_cmp_pd_mask(mask & ~out_of_range, r2, r2_near, _CMP_LT_OQ)) {
      const __m512d u = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(qx, qx), _mm512_mul_pd(qy, qy)), _mm512_mul_pd(qz, qz));
      close += size_t(__builtin_popcount(_mm512_mask_cmp_pd_mask(near, u, x_min, _CMP_LT_OQ)));
    }
    __m512i word = _mm512_or_si512(kind, _mm512_slli_epi64(t, rec::TYPE.shift));
    word = _mm512_or_si512(word, _mm512_and_si512(_mm512_cvttpd_epi64(qx), coord));
    word = _mm512_or_si512(word, _mm512_slli_epi64(_mm512_and_si512(_mm512_cvttpd_epi64(qy), coord), rec::DY.shift));
    return _mm512_or_si512(word, _mm512_slli_epi64(_mm512_and_si512(_mm512_cvttpd_epi64(qz), coord), rec::DZ.shift));
  }
};

/* The types of 8 atoms, by scalar loads (a gather measured slower). */
DPFPGA_AVX512 inline __m512i types8(const int32_t *types, const int64_t *j)
{
  return _mm512_cvtepu32_epi64(_mm256_setr_epi32(types[j[0]], types[j[1]], types[j[2]], types[j[3]], types[j[4]],
                                                 types[j[5]], types[j[6]], types[j[7]]));
}

/* 8 candidates per step.  Each candidate's x, y, z come in one 256-bit load; pairs of those make
 * 512-bit vectors, transposed into x, y and z by two unpacks and a permute each (faster than three
 * gathers).  The kept lanes are packed in a register and stored whole (the slack takes the rest; a
 * compress into memory is slow on some CPUs). */
template <bool CHECK_RANGE, bool SHIFTED, typename Index>
DPFPGA_AVX512 Found listed_avx512(int64_t i, const Index *cand, size_t n, const double *x, double rc2,
                                  const Consts &c, uint64_t *out, int64_t *nbr, const double *shifts)
{
  static_assert(!SHIFTED || sizeof(Index) == 8, "images are int64");
  const __m512d xi = _mm512_set1_pd(x[3 * i]), yi = _mm512_set1_pd(x[3 * i + 1]), zi = _mm512_set1_pd(x[3 * i + 2]);
  const __m512d r2max = _mm512_set1_pd(rc2);
  const __m512i centre = _mm512_set1_epi64(i);
  const Encoder8 enc(c);
  // Lanes of (a0 b0 | a2 b2 | a4 b4 | a6 b6) and (c.. d..) that make x0..x7 (and z0..z7 from the odd ones).
  const __m512i pick_x = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), pick_z = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  size_t m = 0, close = 0;
  unsigned bad = 0, self = 0;
  for (size_t k = 0; k < n; k += 8) {
    const size_t left = n - k;
    const __mmask8 live = left >= 8 ? __mmask8(0xff) : __mmask8((1u << left) - 1);
    int64_t jl[8];  // lanes past the end take the centre itself (a valid index), masked off
    for (size_t l = 0; l < 8; l++)
      jl[l] = l < left ? (SHIFTED ? int64_t(cand[k + l]) & ATOM_MASK : int64_t(cand[k + l])) : i;
    __m512i j;
    if (sizeof(Index) == 8)
      j = _mm512_maskz_loadu_epi64(live, cand + k);
    else
      j = _mm512_cvtepi32_epi64(_mm256_maskz_loadu_epi32(live, cand + k));
    if (SHIFTED) j = _mm512_and_si512(j, _mm512_set1_epi64(ATOM_MASK));
    if (!SHIFTED) self |= _mm512_mask_cmpeq_epi64_mask(live, j, centre);
    // x y z of each (the fourth lane masked off: the last atom's z may end the array): lanes (l, l + 4).
    __m512d p[4];
    for (int l = 0; l < 4; l++)
      p[l] = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_maskz_loadu_pd(7, x + 3 * jl[l])),
                                _mm256_maskz_loadu_pd(7, x + 3 * jl[l + 4]), 1);
    const __m512d xz01 = _mm512_unpacklo_pd(p[0], p[1]), y01 = _mm512_unpackhi_pd(p[0], p[1]);
    const __m512d xz23 = _mm512_unpacklo_pd(p[2], p[3]), y23 = _mm512_unpackhi_pd(p[2], p[3]);
    __m512d vx = _mm512_sub_pd(_mm512_permutex2var_pd(xz01, pick_x, xz23), xi);
    __m512d vy = _mm512_sub_pd(_mm512_permutex2var_pd(y01, pick_x, y23), yi);
    __m512d vz = _mm512_sub_pd(_mm512_permutex2var_pd(xz01, pick_z, xz23), zi);
    if (SHIFTED) {  // each image's shift row, transposed the same way; lanes past the end take row 0
      __m512d s[4];
      for (int l = 0; l < 4; l++) {
        const uint64_t a = size_t(l) < left ? uint64_t(int64_t(cand[k + l])) >> IMAGE_SHIFT : 0;
        const uint64_t b = size_t(l + 4) < left ? uint64_t(int64_t(cand[k + l + 4])) >> IMAGE_SHIFT : 0;
        s[l] = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_loadu_pd(shifts + 4 * a)),
                                  _mm256_loadu_pd(shifts + 4 * b), 1);
      }
      const __m512d sxz01 = _mm512_unpacklo_pd(s[0], s[1]), sy01 = _mm512_unpackhi_pd(s[0], s[1]);
      const __m512d sxz23 = _mm512_unpacklo_pd(s[2], s[3]), sy23 = _mm512_unpackhi_pd(s[2], s[3]);
      vx = _mm512_add_pd(vx, _mm512_permutex2var_pd(sxz01, pick_x, sxz23));
      vy = _mm512_add_pd(vy, _mm512_permutex2var_pd(sy01, pick_x, sy23));
      vz = _mm512_add_pd(vz, _mm512_permutex2var_pd(sxz01, pick_z, sxz23));
    }
    const __m512d r2 = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(vx, vx), _mm512_mul_pd(vy, vy)), _mm512_mul_pd(vz, vz));
    const __mmask8 inside = _mm512_mask_cmp_pd_mask(live, r2, r2max, _CMP_LT_OQ);
    const __m512i word = enc.words<CHECK_RANGE>(vx, vy, vz, r2, types8(c.types, jl), inside, bad, close);
    _mm512_storeu_si512(out + m, _mm512_maskz_compress_epi64(inside, word));
    _mm512_storeu_si512(nbr + m, _mm512_maskz_compress_epi64(inside, j));
    m += size_t(__builtin_popcount(inside));
  }
  return Found{m, close, bad != 0, self != 0};
}

/* n pairs kept already (the cell list's), 8 per step. */
template <bool CHECK_RANGE>
DPFPGA_AVX512 Found given_avx512(size_t n, const double *dx, const double *dy, const double *dz, const int64_t *j,
                                 const Consts &c, uint64_t *out)
{
  const Encoder8 enc(c);
  size_t close = 0;
  unsigned bad = 0;
  for (size_t k = 0; k < n; k += 8) {
    const size_t left = n - k;
    const __mmask8 live = left >= 8 ? __mmask8(0xff) : __mmask8((1u << left) - 1);
    int64_t jl[8];  // lanes past the end take the first pair's atom, masked off
    for (size_t l = 0; l < 8; l++) jl[l] = j[l < left ? k + l : 0];
    const __m512d vx = _mm512_maskz_loadu_pd(live, dx + k), vy = _mm512_maskz_loadu_pd(live, dy + k);
    const __m512d vz = _mm512_maskz_loadu_pd(live, dz + k);
    const __m512d r2 = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(vx, vx), _mm512_mul_pd(vy, vy)), _mm512_mul_pd(vz, vz));
    _mm512_mask_storeu_epi64(out + k, live, enc.words<CHECK_RANGE>(vx, vy, vz, r2, types8(c.types, jl), live, bad, close));
  }
  return Found{n, close, bad != 0, false};
}

/* 8 candidates per step, contiguous loads, the kept lanes packed in registers and stored whole. */
DPFPGA_AVX512 size_t images_avx512(size_t n, const double *px, const double *py, const double *pz, const double *sx,
                                   const double *sy, const double *sz, const int64_t *j, const int64_t *home,
                                   const double *pi, double rc2, int64_t centre, int64_t *oj, double *ox, double *oy,
                                   double *oz)
{
  const __m512d xi = _mm512_set1_pd(pi[0]), yi = _mm512_set1_pd(pi[1]), zi = _mm512_set1_pd(pi[2]);
  const __m512d r2max = _mm512_set1_pd(rc2);
  const __m512i me = _mm512_set1_epi64(centre);
  size_t m = 0;
  for (size_t q = 0; q < n; q += 8) {
    const __mmask8 live = n - q >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - q)) - 1);
    const __m512d vx = _mm512_add_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(live, px + q), xi), _mm512_maskz_loadu_pd(live, sx + q));
    const __m512d vy = _mm512_add_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(live, py + q), yi), _mm512_maskz_loadu_pd(live, sy + q));
    const __m512d vz = _mm512_add_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(live, pz + q), zi), _mm512_maskz_loadu_pd(live, sz + q));
    const __m512d r2 = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(vx, vx), _mm512_mul_pd(vy, vy)), _mm512_mul_pd(vz, vz));
    const __mmask8 keep = _mm512_mask_cmp_pd_mask(live, r2, r2max, _CMP_LT_OQ) &
                          _mm512_mask_cmpneq_epi64_mask(live, _mm512_maskz_loadu_epi64(live, home + q), me);
    _mm512_storeu_si512(oj + m, _mm512_maskz_compress_epi64(keep, _mm512_maskz_loadu_epi64(live, j + q)));
    _mm512_storeu_pd(ox + m, _mm512_maskz_compress_pd(keep, vx));
    _mm512_storeu_pd(oy + m, _mm512_maskz_compress_pd(keep, vy));
    _mm512_storeu_pd(oz + m, _mm512_maskz_compress_pd(keep, vz));
    m += size_t(__builtin_popcount(keep));
  }
  return m;
}

/* One 256-bit vector per atom (x, y, z, pad): a record's three fields sign-extended by one shift left
 * (the pad lane's shift of 64 makes it 0) and one arithmetic shift right, subtracted from its
 * neighbour's vector in one load and one store.  VIRIAL: r_ij, from the input words `in`, sign-extended
 * the same way, and each row x of w9 gains r_x * dE/dr_ij (both within int32: a 32 x 32 -> 64-bit
 * signed product, exact). */
template <bool VIRIAL>
DPFPGA_AVX512 void scatter_forces_avx512(int64_t centre, size_t n, const uint64_t *out, const uint64_t *in,
                                         const int64_t *nbr, int64_t *forces, int64_t *w9)
{
  namespace o = wire::output_record;
  constexpr int B = int(o::DEDX.bits), C = int(rec::DX.bits);
  static_assert(o::DEDX.bits == o::DEDY.bits && o::DEDX.bits == o::DEDZ.bits, "one force format");
  static_assert(B <= 32 && C <= 32, "r_ij and dE/dr_ij within int32");
  const __m256i up = _mm256_setr_epi64x(64 - B - o::DEDX.shift, 64 - B - o::DEDY.shift, 64 - B - o::DEDZ.shift, 64);
  const __m256i up_r = _mm256_setr_epi64x(64 - C - rec::DX.shift, 64 - C - rec::DY.shift, 64 - C - rec::DZ.shift, 64);
  __m256i fi = _mm256_setzero_si256(), wx = fi, wy = fi, wz = fi;
  for (size_t q = 0; q < n; q++) {
    const __m256i g = _mm256_srai_epi64(_mm256_sllv_epi64(_mm256_set1_epi64x(int64_t(out[q])), up), 64 - B);
    fi = _mm256_add_epi64(fi, g);
    __m256i *fj = reinterpret_cast<__m256i *>(forces + 4 * nbr[q]);
    _mm256_storeu_si256(fj, _mm256_sub_epi64(_mm256_loadu_si256(fj), g));
    if (VIRIAL) {
      const __m256i r = _mm256_srai_epi64(_mm256_sllv_epi64(_mm256_set1_epi64x(int64_t(in[q])), up_r), 64 - C);
      wx = _mm256_add_epi64(wx, _mm256_mul_epi32(_mm256_permute4x64_epi64(r, 0x00), g));
      wy = _mm256_add_epi64(wy, _mm256_mul_epi32(_mm256_permute4x64_epi64(r, 0x55), g));
      wz = _mm256_add_epi64(wz, _mm256_mul_epi32(_mm256_permute4x64_epi64(r, 0xaa), g));
    }
  }
  __m256i *f = reinterpret_cast<__m256i *>(forces + 4 * centre);
  _mm256_storeu_si256(f, _mm256_add_epi64(_mm256_loadu_si256(f), fi));
  if (VIRIAL) {
    alignas(32) int64_t row[3][4];
    _mm256_store_si256(reinterpret_cast<__m256i *>(row[0]), wx);
    _mm256_store_si256(reinterpret_cast<__m256i *>(row[1]), wy);
    _mm256_store_si256(reinterpret_cast<__m256i *>(row[2]), wz);
    for (int x = 0; x < 3; x++)
      for (int y = 0; y < 3; y++) w9[3 * x + y] += row[x][y];
  }
}

bool cpu_has_avx512()
{
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}
#else
bool cpu_has_avx512() { return false; }
#endif

const bool HAVE_AVX512 = cpu_has_avx512();
std::atomic<bool> vector_on{true};

bool vector() { return HAVE_AVX512 && vector_on.load(std::memory_order_relaxed); }

}  // namespace

// ---- the kernels: the build the CPU allows -----------------------------------------------------------

double near_bound(const Consts &c)
{
  // Each |q_a - v_a * scale| <= 1/2 (and a hair of rounding), so |q| >= |v| * scale - sqrt(3)/2: with
  // |v| * scale >= sqrt(x_min) + 2, u = |q|^2 is above x_min.  The bound is taken a little larger still.
  const double r = (std::sqrt(std::max(c.x_min, 0.0)) + 2.0) / c.scale;
  return r * r * (1.0 + 1e-9);
}

bool fits_coord_format(double rcut, const Consts &c)
{
  // |v| < rcut for each component of a kept pair (to rounding: a margin of two format steps), so
  // v * scale + 0.5 lies within rcut * scale + 2 of zero.
  const double reach = rcut * c.scale + 2.0;
  return c.lo <= -reach && reach < c.top;
}

Found listed(int64_t i, const int64_t *cand, size_t n, const double *x, double rc2, const Consts &c, uint64_t *out,
             int64_t *nbr, const double *shifts)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (vector()) {
    if (shifts)
      return c.range_fits ? listed_avx512<false, true>(i, cand, n, x, rc2, c, out, nbr, shifts)
                          : listed_avx512<true, true>(i, cand, n, x, rc2, c, out, nbr, shifts);
    return c.range_fits ? listed_avx512<false, false>(i, cand, n, x, rc2, c, out, nbr, nullptr)
                        : listed_avx512<true, false>(i, cand, n, x, rc2, c, out, nbr, nullptr);
  }
#endif
  return listed_portable(i, cand, n, x, rc2, c, out, nbr, shifts);
}

Found listed(int64_t i, const int32_t *cand, size_t n, const double *x, double rc2, const Consts &c, uint64_t *out,
             int64_t *nbr)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (vector())
    return c.range_fits ? listed_avx512<false, false>(i, cand, n, x, rc2, c, out, nbr, nullptr)
                        : listed_avx512<true, false>(i, cand, n, x, rc2, c, out, nbr, nullptr);
#endif
  return listed_portable(i, cand, n, x, rc2, c, out, nbr, nullptr);
}

size_t images(size_t n, const double *px, const double *py, const double *pz, const double *sx, const double *sy,
              const double *sz, const int64_t *j, const int64_t *home, const double *pi, double rc2, int64_t centre,
              int64_t *oj, double *ox, double *oy, double *oz)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (vector()) return images_avx512(n, px, py, pz, sx, sy, sz, j, home, pi, rc2, centre, oj, ox, oy, oz);
#endif
  return images_portable(n, px, py, pz, sx, sy, sz, j, home, pi, rc2, centre, oj, ox, oy, oz);
}

void scatter_forces(int64_t centre, size_t n, const uint64_t *out, const int64_t *nbr, int64_t *forces,
                    size_t stride)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (stride == 4) return scatter_forces_avx512<false>(centre, n, out, nullptr, nbr, forces, nullptr);
#endif
  scatter_forces_portable(centre, n, out, nbr, forces);
}

void scatter_forces_virial(int64_t centre, size_t n, const uint64_t *out, const uint64_t *in, const int64_t *nbr,
                           int64_t *forces, size_t stride, int64_t *w9)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (stride == 4) return scatter_forces_avx512<true>(centre, n, out, in, nbr, forces, w9);
#endif
  scatter_forces_portable(centre, n, out, nbr, forces);
  virial_portable(n, in, out, w9);
}

size_t force_stride() { return vector() ? 4 : 3; }

Found given(size_t n, const double *dx, const double *dy, const double *dz, const int64_t *j, const Consts &c,
            uint64_t *out)
{
#ifdef DPFPGA_HAVE_AVX512_BUILD
  if (vector())
    return c.range_fits ? given_avx512<false>(n, dx, dy, dz, j, c, out) : given_avx512<true>(n, dx, dy, dz, j, c, out);
#endif
  // The types in blocks, then the vectorized map.
  constexpr size_t BLOCK = 64;
  int32_t type[BLOCK];
  Found f;
  f.kept = n;
  for (size_t k0 = 0; k0 < n; k0 += BLOCK) {
    const size_t m = std::min(n - k0, BLOCK);
    for (size_t k = 0; k < m; k++) type[k] = c.types[j[k0 + k]];
    int bad = 0;
    size_t close = 0;
    given_map(m, dx + k0, dy + k0, dz + k0, type, c, out + k0, bad, close);
    f.close += close, f.bad |= bad != 0;
  }
  return f;
}

DPFPGA_VECTOR_CLONES size_t count_type(const uint64_t *words, size_t n, unsigned t)
{
  size_t s = 0;
  for (size_t k = 0; k < n; k++) s += size_t(rec::TYPE.get(words[k]) == t);
  return s;
}

const char *build() { return vector() ? "avx512" : "portable"; }

const char *use_vector(bool on)
{
  const char *before = build();
  vector_on.store(on, std::memory_order_relaxed);
  return before;
}

}  // namespace records
}  // namespace dpfpga
