/* The cpu device's vector kernels (cpu.cpp), written once over a vector type and compiled twice by
 * cpu.cpp: inside `#pragma GCC target("avx2,fma")` with 4 doubles per vector and fused multiply-adds,
 * and portably with 2 doubles per vector (SSE2 on x86-64, NEON elsewhere); cpu.cpp picks one at run
 * time.  No include guard: included once per copy, inside that copy's namespace, which provides
 *
 *   VW            doubles per vector (a power of two, 2 or 4)
 *   V, VI         VW doubles, VW int64 (GCC vector extensions)
 *   vfloor(V)     lane-wise floor
 *   vfma(a, b, c) a * b + c, fused or not
 *   vmin, vmax    lane-wise
 *   vbroadcast(p) *p in every lane
 *
 * Why doubles: every value here is an integer of a fixed-point format, and every product and every
 * partial sum below stays within +-2^53 for any inputs the formats allow (cpu.cpp checks each bound
 * from the model's formats when the device opens, and refuses a model that would break one), so
 * float64 holds them exactly and a sum is the same integer in any order and with or without fusing:
 * FMA changes nothing but speed.  Rounding is the reference's (contract/fixedpoint.py shift_round):
 * sr(v) = floor((v + half) * mul) with half = 2^(k-1), mul = 2^-k for a right shift by k > 0, and
 * half = 0, mul = 2^-k for k <= 0, computed as floor(v * mul + half * mul), one multiply-add: v * mul is
 * exact (a power of two), and so is the sum, (v + half) 2^-k, whenever |v| + half <= 2^53 (the bound
 * cpu.cpp checks); fused or not, the same value.  A product rounded, sr(a b), is floor(a (b mul) +
 * half mul) with b mul formed once where b is shared (sr_scaled).
 * Saturation clips to the format's range and raises a flag, as fixedpoint.saturate does.
 *
 * Layouts: matrices are row-major with a row stride `ld` that is a multiple of 8 (the padded width of
 * a layer); padded columns of weights and biases are zero, so padded columns of activations stay zero
 * and raise no flag. */

namespace {

inline V splat(double x)
{
  V v;
#pragma GCC unroll 4
  for (int l = 0; l < VW; l++) v[l] = x;
  return v;
}
inline V load(const double *p)
{
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void store(double *p, V v) { __builtin_memcpy(p, &v, sizeof v); }
inline double hsum(V v)
{
  double s = 0;
#pragma GCC unroll 4
  for (int l = 0; l < VW; l++) s += v[l];  // exact: integers below 2^53
  return s;
}
inline V sr(V v, const DShift &s) { return vfloor(vfma(v, vbroadcast(&s.mul), vbroadcast(&s.hmul))); }
inline double sr1(double v, const DShift &s) { return std::floor(v * s.mul + s.hmul); }  // one value
/* Clip to [lo, hi]; lanes outside set their bit of `flag`. */
inline V clip(V v, const DRange &r, VI &flag)
{
  const V c = vmin(vmax(v, vbroadcast(&r.lo)), vbroadcast(&r.hi));
  flag |= c != v;
  return c;
}
/* A shift and a range as vectors, held in registers over a loop (stores through double pointers could
 * alias the constants in memory, so the compiler would load them again each iteration). */
struct VShift {
  V mul, hmul;
};
struct VRange {
  V lo, hi;
};
inline VShift vshift(const DShift &s) { return {vbroadcast(&s.mul), vbroadcast(&s.hmul)}; }
inline VRange vrange(const DRange &r) { return {vbroadcast(&r.lo), vbroadcast(&r.hi)}; }
inline V sr(V v, const VShift &s) { return vfloor(vfma(v, s.mul, s.hmul)); }
/* sr(a b) given bm = b * s's mul */
inline V sr_scaled(V a, V bm, const VShift &s) { return vfloor(vfma(a, bm, s.hmul)); }
inline V clip(V v, const VRange &r, VI &flag)
{
  const V c = vmin(vmax(v, r.lo), r.hi);
  flag |= c != v;
  return c;
}
inline bool any(VI flag)
{
#pragma GCC unroll 4
  for (int l = 0; l < VW; l++)
    if (flag[l]) return true;
  return false;
}

}  // namespace

namespace {

/* One quadratic-table lookup for VW records (model/reference.py table_lookup, one channel): t = rq(c xi),
 * y = sat(rq(a + rq((b + t) xi))), y' = sat(rq(b + 2t)), and y' = 0 with no flag for a record below the
 * table's start (`below`, whose position was raised to x_min: the table is constant there).  xim: xi
 * times sxi's mul. */
inline void quad(V a, V b, V c, V xim, VI below, const VShift &sxi, const VShift &sy, const VShift &sdy,
                 const VRange &out, const VRange &dout, V &y, V &dy, VI &flag)
{
  const V tt = sr_scaled(c, xim, sxi);
  y = clip(sr(a + sr_scaled(b + tt, xim, sxi), sy), out, flag);
  VI slope_flag{};
  // sr(b + 2t) = floor(2t mul + (b mul + half mul)): every partial sum is (part + half) 2^-k, exact
  const V d = clip(vfloor(vfma(tt + tt, sdy.mul, vfma(b, sdy.mul, sdy.hmul))), dout, slope_flag);
  flag |= slope_flag & ~below;
  dy = below ? splat(0) : d;
}

}  // namespace

/* Stages 1-3 for one atom's n >= 1 records (input record words): type, d, s, s', h, h' and R = (rq s,
 * rq h dx, rq h dy, rq h dz), into o's arrays.  The lanes past n repeat the last record (its values go
 * to the padding, its flags are a real record's).  below: some record lies closer than r_min (u below
 * the tables' start).  Returns whether anything saturated. */
bool records(const RecConsts &k, int n, const uint64_t *words, const RecordRows &o, bool &below_any)
{
  namespace ir = wire::input_record;
  const VShift sxi = vshift(k.xi), ssy = vshift(k.s_y), ssdy = vshift(k.s_dy), shy = vshift(k.h_y),
               shdy = vshift(k.h_dy), sr0 = vshift(k.r0), srh = vshift(k.rh);
  const VRange s_out = vrange(k.s_out), s_dout = vrange(k.s_dout), h_out = vrange(k.h_out),
               h_dout = vrange(k.h_dout), rr = vrange(k.R);
  VI flag{}, below_seen{};
  for (int j0 = 0; j0 < n; j0 += VW) {
    // per lane (scalar): the fields, u = |d|^2 (int64: exact), the segment and the position in it
    double lane[10][VW];  // dx, dy, dz, xi, then the row's s a b c, h a b c
    VI below{};
#pragma GCC unroll 4
    for (int l = 0; l < VW; l++) {
      const uint64_t word = words[std::min(j0 + l, n - 1)];
      const int64_t x0 = ir::DX.get_signed(word), x1 = ir::DY.get_signed(word), x2 = ir::DZ.get_signed(word);
      const int64_t u = x0 * x0 + x1 * x1 + x2 * x2;
      const int64_t x = u < k.x_min ? k.x_min : u;
      const double *row = k.coef + 8 * size_t(std::min((x >> k.index_shift) - k.first_seg, k.nseg));
      o.type[j0 + l] = int32_t(ir::TYPE.get(word));
      lane[0][l] = double(x0), lane[1][l] = double(x1), lane[2][l] = double(x2);
      lane[3][l] = double((x >> (k.index_shift - k.xi_bits)) & k.xi_mask);
      below[l] = u < k.x_min ? -1 : 0;
#pragma GCC unroll 6
      for (int q = 0; q < 6; q++) lane[4 + q][l] = row[q];
    }
    const V dx = load(lane[0]), dy = load(lane[1]), dz = load(lane[2]), xi = load(lane[3]);
    V c[6];
#pragma GCC unroll 6
    for (int q = 0; q < 6; q++) c[q] = load(lane[4 + q]);
    // VW records at once: the two tables, then R
    V s, ds, h, dh;
    const V xim = xi * sxi.mul;
    quad(c[0], c[1], c[2], xim, below, sxi, ssy, ssdy, s_out, s_dout, s, ds, flag);
    quad(c[3], c[4], c[5], xim, below, sxi, shy, shdy, h_out, h_dout, h, dh, flag);
    below_seen |= below;
    store(o.dx + j0, dx), store(o.dy + j0, dy), store(o.dz + j0, dz);
    store(o.s + j0, s), store(o.ds + j0, ds), store(o.h + j0, h), store(o.dh + j0, dh);
    const V R0 = clip(sr(s, sr0), rr, flag), R1 = clip(sr(h * dx, srh), rr, flag), R2 = clip(sr(h * dy, srh), rr, flag),
            R3 = clip(sr(h * dz, srh), rr, flag);
#pragma GCC unroll 4
    for (int l = 0; l < VW; l++) {
      double *R = o.R + 4 * size_t(j0 + l);
      R[0] = R0[l], R[1] = R1[l], R[2] = R2[l], R[3] = R3[l];
    }
  }
  below_any = any(below_seen);
  return any(flag);
}

/* Stage 10's last steps for one atom's n records, from dR and dS_g (backward) and records()' values:
 * dS = sat(rq dR0 + dS_g), dH = sat(rq dR_xyz . d), dU = sat(rq dS s' + rq dH h'),
 * dE/dr_a = sat(rq dR_a h + rq dU d_a); their output record words into out[0 .. n-1].  The padding lanes
 * past n are computed and ignored.  Returns whether anything saturated. */
bool tail(const RecConsts &k, int n, const RecordRows &o, uint64_t *out)
{
  namespace orec = wire::output_record;
  const VShift sds = vshift(k.ds_r), sdh = vshift(k.dh), sdus = vshift(k.du_s), sduh = vshift(k.du_h),
               sfr = vshift(k.f_r), sfu = vshift(k.f_u);
  const VRange rs = vrange(k.dS), rh = vrange(k.dH), ru = vrange(k.dU), rf = vrange(k.F);
  VI flag{};
  for (int j0 = 0; j0 < n; j0 += VW) {
    const V dR0 = load(o.dR + j0), dR1 = load(o.dR + o.ld + j0), dR2 = load(o.dR + 2 * o.ld + j0),
            dR3 = load(o.dR + 3 * o.ld + j0);
    const V dx = load(o.dx + j0), dy = load(o.dy + j0), dz = load(o.dz + j0), h = load(o.h + j0);
    VI f{};
    const V dS = clip(sr(dR0, sds) + load(o.dSg + j0), rs, f);
    const V dH = clip(sr(vfma(dR3, dz, vfma(dR2, dy, dR1 * dx)), sdh), rh, f);  // exact: any order
    const V dU = clip(sr(dS * load(o.ds + j0), sdus) + sr(dH * load(o.dh + j0), sduh), ru, f);
    const V F0 = clip(sr(dR1 * h, sfr) + sr(dU * dx, sfu), rf, f), F1 = clip(sr(dR2 * h, sfr) + sr(dU * dy, sfu), rf, f),
            F2 = clip(sr(dR3 * h, sfr) + sr(dU * dz, sfu), rf, f);
    const int lanes = std::min(VW, n - j0);
    for (int l = 0; l < lanes; l++) {
      flag[0] |= f[l];
      out[j0 + l] = orec::KIND_BITS | orec::DEDX.put(uint64_t(int64_t(F0[l]))) |
                    orec::DEDY.put(uint64_t(int64_t(F1[l]))) | orec::DEDZ.put(uint64_t(int64_t(F2[l])));
    }
  }
  return any(flag);
}

/* C (rows x 8 * panels) = A (rows x K, stride lda) @ B, B packed by gemm_pack (cpu.cpp): panels of 8
 * columns, each K rows of 8 values.  rows is a multiple of GEMM_ROWS. */
void gemm(int rows, int K, int panels, const double *A, int lda, const double *B, double *C, int ldc)
{
  constexpr int NV = 8 / VW;  // vectors per panel row
  for (int p = 0; p < panels; p++) {
    const double *Bp = B + size_t(p) * size_t(K) * 8;
    for (int i = 0; i < rows; i += GEMM_ROWS) {
      // GEMM_ROWS x 8 accumulators held in registers (AVX2: 12 of the 16 ymm) over the whole K loop
      V acc[GEMM_ROWS][NV] = {};
      const double *a = A + size_t(i) * size_t(lda);
      for (int k = 0; k < K; k++) {
        V b[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) b[v] = load(Bp + size_t(k) * 8 + size_t(v) * VW);
#pragma GCC unroll 8
        for (int r = 0; r < GEMM_ROWS; r++) {
          const V x = vbroadcast(a + size_t(r) * size_t(lda) + size_t(k));
#pragma GCC unroll 8
          for (int v = 0; v < NV; v++) acc[r][v] = vfma(x, b[v], acc[r][v]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < GEMM_ROWS; r++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) store(C + size_t(i + r) * size_t(ldc) + size_t(p) * 8 + size_t(v) * VW, acc[r][v]);
    }
  }
}

namespace {

/* One record's G and G' over all channels from its segment's coefficients p (a, b, c rows of m1).
 * CLIP: the segment may saturate (GTable::safe), so clip and flag; otherwise every value is inside its
 * format for every xi (checked when the model loads), and clipping would change nothing.  SLOPE: false
 * below x_min, where the table is constant (G' = 0, and no flag for it). */
template <bool CLIP, bool SLOPE>
inline void g_row(const GTable &t, int m1, const double *p, double xi, double *G, double *dG, VI &flag)
{
  const VShift sxi = vshift(t.xi), sy = vshift(t.y), sdy = vshift(t.dy);
  const V xm = splat(xi * t.xi.mul), zero = splat(0);
  const VRange out = vrange(t.out), dout = vrange(t.dout);
  for (int c = 0; c < m1; c += VW) {
    const V a = load(p + c), b = load(p + m1 + c), cc = load(p + 2 * m1 + c);
    const V tt = sr_scaled(cc, xm, sxi);  // |c xi| < 2^(coef + xi_bits)
    V y = sr(a + sr_scaled(b + tt, xm, sxi), sy);
    V dy = SLOPE ? vfloor(vfma(tt + tt, sdy.mul, vfma(b, sdy.mul, sdy.hmul))) : zero;  // as in quad()
    if (CLIP) {
      y = clip(y, out, flag);
      if (SLOPE) dy = clip(dy, dout, flag);
    }
    store(G + c, y);
    store(dG + c, dy);
  }
}

/* acc[k][v] += R_j[k] G_j[c + v VW] over the records, NV vectors of channels from c, from acc[0] = pad0
 * (the empty slots' products, pad_slots) or 0; then GR = rq(acc). */
template <int NV>
inline void gr_block(const EmbedConsts &e, int nrec, const double *R, const double *G, const double *pad0, int c,
                     double *GR, VI &flag)
{
  const int m1 = e.m1;
  const VShift sgr = vshift(e.gr);
  const VRange gr_range = vrange(e.gr_range);
  V acc[4][NV] = {};
  if (pad0)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[0][v] = load(pad0 + c + v * VW);
  for (int j = 0; j < nrec; j++) {
    const double *Rj = R + 4 * size_t(j);  // |R G| sums: see CpuModel (GR)
    V g[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) g[v] = load(G + size_t(j) * size_t(m1) + size_t(c + v * VW));
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
      const V r = vbroadcast(Rj + k);
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[k][v] = vfma(r, g[v], acc[k][v]);
    }
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; k++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) store(GR + size_t(k) * size_t(m1) + size_t(c + v * VW), clip(sr(acc[k][v], sgr), gr_range, flag));
}

}  // namespace

/* Stages 4-5 for one atom's records: G(s), G'(s) per record from its neighbour type's table, and
 * GR = rq(sum_j R_j^T G_j + pad0), pad0 (row 0 only, M1 values) the atom's empty slots' products under
 * pad_slots, else null.  Returns whether anything saturated (a coefficient result, or s past the table's
 * end). */
bool embed(const EmbedConsts &e, int nrec, const int32_t *type, const double *s, const double *R, const double *pad0,
           double *G, double *dG, double *GR, const double **cf, double *xi, uint8_t *below)
{
  const int m1 = e.m1;
  VI flag{};
  bool sat = false;
  // Per record: its segment's coefficients (null past the table's end), its position in the segment.
  for (int j = 0; j < nrec; j++) {
    const GTable &t = e.g[type[j]];
    const int64_t sj = int64_t(s[j]);
    below[j] = sj < t.x_min;
    const int64_t x = below[j] ? t.x_min : sj;
    const int64_t idx = (x >> t.index_shift) - t.first_seg;  // >= 0: x_min's segment is checked at load
    cf[j] = idx < t.nseg ? t.coef + size_t(idx) * 3 * size_t(m1) : nullptr;
    xi[j] = double((x >> (t.index_shift - t.xi_bits)) & t.xi_mask);
    // The tables (hundreds of kB) do not stay in cache: ask for this record's segment now.
    if (cf[j])
      for (size_t off = 0; off < 3 * size_t(m1) * sizeof(double); off += 64)
        __builtin_prefetch(reinterpret_cast<const char *>(cf[j]) + off);
  }
  // Record by record, all channels: the record's constants and segment are fetched once.
  for (int j = 0; j < nrec; j++) {
    double *Gj = G + size_t(j) * size_t(m1), *dGj = dG + size_t(j) * size_t(m1);
    if (!cf[j]) {  // past the last segment: G = G' = 0, and that counts as saturation
      sat = true;
      std::fill(Gj, Gj + m1, 0.0);
      std::fill(dGj, dGj + m1, 0.0);
      continue;
    }
    const GTable &t = e.g[type[j]];
    const bool safe = t.safe[(cf[j] - t.coef) / (3 * m1)];
    if (below[j])
      safe ? g_row<false, false>(t, m1, cf[j], xi[j], Gj, dGj, flag) : g_row<true, false>(t, m1, cf[j], xi[j], Gj, dGj, flag);
    else
      safe ? g_row<false, true>(t, m1, cf[j], xi[j], Gj, dGj, flag) : g_row<true, true>(t, m1, cf[j], xi[j], Gj, dGj, flag);
  }
  // GR = R^T G, two vectors of channels at a time (8 sums in registers over the records)
  int c = 0;
  for (; c + 2 * VW <= m1; c += 2 * VW) gr_block<2>(e, nrec, R, G, pad0, c, GR, flag);
  for (; c < m1; c += VW) gr_block<1>(e, nrec, R, G, pad0, c, GR, flag);
  return sat || any(flag);
}

/* max |p[i]| over n values (n a multiple of VW). */
double maxabs(int n, const double *p)
{
  V m = splat(0);
  for (int i = 0; i < n; i += VW) {
    const V v = load(p + i);
    m = vmax(m, vmax(v, -v));
  }
  double r = 0;
#pragma GCC unroll 4
  for (int l = 0; l < VW; l++) r = std::max(r, m[l]);
  return r;
}

namespace {

/* backward()'s loop; CLIP false: no dGj can leave its format (the caller's bound), so none is clipped. */
template <bool CLIP>
bool backward_records(const BackConsts &k, int nrec, const double *R, const double *G, const double *dG,
                      const double *dGR, double *dR, size_t ld, double *dSg)
{
  const int m1 = k.m1;
  VI flag{};
  const VShift sdgj = vshift(k.dgj), sdr = vshift(k.dr);
  const VRange dgj_range = vrange(k.dgj_range), dr_range = vrange(k.dr_range);
  for (int j = 0; j < nrec; j++) {
    const double *Gj = G + size_t(j) * size_t(m1), *dGj = dG + size_t(j) * size_t(m1);
    const V r0 = splat(R[4 * j]), r1 = splat(R[4 * j + 1]), r2 = splat(R[4 * j + 2]), r3 = splat(R[4 * j + 3]);
    V a0{}, a1{}, a2{}, a3{}, as{};
    for (int c = 0; c < m1; c += VW) {
      const V g = load(Gj + c), dg = load(dGj + c);
      const V d0 = load(dGR + c), d1 = load(dGR + m1 + c), d2 = load(dGR + 2 * m1 + c), d3 = load(dGR + 3 * m1 + c);
      a0 = vfma(g, d0, a0);
      a1 = vfma(g, d1, a1);
      a2 = vfma(g, d2, a2);
      a3 = vfma(g, d3, a3);
      V gj = sr(vfma(r3, d3, vfma(r2, d2, vfma(r1, d1, r0 * d0))), sdgj);
      if (CLIP) gj = clip(gj, dgj_range, flag);
      as = vfma(gj, dg, as);
    }
    // dR_q = rq(sum over channels of a_q), the four at once
    double sums[4];
    hsum4(a0, a1, a2, a3, sums);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q += VW) {
      const V v = clip(sr(load(sums + q), sdr), dr_range, flag);
#pragma GCC unroll 4
      for (int l = 0; l < VW; l++) dR[size_t(q + l) * ld + size_t(j)] = v[l];
    }
    dSg[j] = sr1(hsum(as), k.dsg);
  }
  return any(flag);
}

}  // namespace

/* Stage 10's sums for one atom's records: dR_j = rq(G_j dGR^T) (dR_k of record j at dR[k ld + j]),
 * dGj = rq(R_j dGR), and dS_g = sr(sum_c dGj[c] G'_j[c]).  Returns whether anything saturated.
 * An atom whose dGj cannot leave their format, |sum_k R_jk dGR_kc| <= sum_k max_j |R_jk| max_c |dGR_kc|
 * rounding inside it (the bound exact in float64: below the 2^53 that cpu.cpp checks for dGj's sums), skips
 * their clipping: it would change nothing and flag nothing. */
bool backward(const BackConsts &k, int nrec, const double *R, const double *G, const double *dG, const double *dGR,
              double *dR, size_t ld, double *dSg)
{
  const int m1 = k.m1;
  V rmax[4 / VW];  // max_j |R_jq| in lane q % VW of rmax[q / VW]
  for (auto &v : rmax) v = splat(0);
  for (int j = 0; j < nrec; j++)
#pragma GCC unroll 2
    for (int v = 0; v < 4 / VW; v++) {
      const V r = load(R + 4 * j + v * VW);
      rmax[v] = vmax(rmax[v], vmax(r, -r));
    }
  double bound = 0;
  for (int q = 0; q < 4; q++) bound += rmax[q / VW][q % VW] * maxabs(m1, dGR + q * m1);
  const bool inside = std::floor(bound * k.dgj.mul + k.dgj.hmul) <= k.dgj_range.hi &&
                      std::floor(-bound * k.dgj.mul + k.dgj.hmul) >= k.dgj_range.lo;
  return inside ? backward_records<false>(k, nrec, R, G, dG, dGR, dR, ld, dSg)
                : backward_records<true>(k, nrec, R, G, dG, dGR, dR, ld, dSg);
}

namespace {
inline double clip1(double v, const DRange &r, bool &flag)
{
  const double c = std::min(std::max(v, r.lo), r.hi);
  flag |= c != v;
  return c;
}
}  // namespace

/* Stage 6 in float64 for one atom: x[c M2 + b] = rq(sum_k GR[k][c] GR[k][b]).  Only for an atom whose
 * sums, and their rounding, stay below 2^53 (the caller checks 4 max|GR|^2 + half < 2^53: the int64 path
 * otherwise).  Returns whether anything saturated. */
bool descriptor(const DescConsts &d, const double *GR, double *x)
{
  const int m1 = d.m1, m2 = d.m2;
  VI flag{};
  bool sat = false;
  const VShift s = vshift(d.d);
  const VRange range = vrange(d.d_range);
  if (d.band) {  // desc_band: x[c M2 + b] = rq(T[c][(c + b) mod M1])
    for (int c = 0; c < m1; c++)
      for (int b = 0; b < m2; b++) {
        const int e = (c + b) % m1;
        const double acc = GR[c] * GR[e] + GR[m1 + c] * GR[m1 + e] + GR[2 * m1 + c] * GR[2 * m1 + e] +
                           GR[3 * m1 + c] * GR[3 * m1 + e];
        x[c * m2 + b] = clip1(sr1(acc, d.d), d.d_range, sat);
      }
    return sat;
  }
  for (int c = 0; c < m1; c++) {
    const V g0 = vbroadcast(GR + c), g1 = vbroadcast(GR + m1 + c), g2 = vbroadcast(GR + 2 * m1 + c),
            g3 = vbroadcast(GR + 3 * m1 + c);
    int b = 0;
    for (; b + VW <= m2; b += VW)
      store(x + c * m2 + b, clip(sr(vfma(g3, load(GR + 3 * m1 + b), vfma(g2, load(GR + 2 * m1 + b),
                                     vfma(g1, load(GR + m1 + b), g0 * load(GR + b)))), s), range, flag));
    for (; b < m2; b++) {
      const double acc = GR[c] * GR[b] + GR[m1 + c] * GR[m1 + b] + GR[2 * m1 + c] * GR[2 * m1 + b] +
                         GR[3 * m1 + c] * GR[3 * m1 + b];
      x[c * m2 + b] = clip1(sr1(acc, d.d), d.d_range, sat);
    }
  }
  return sat || any(flag);
}

/* Stage 9 in float64 for one atom: dGR[k][c] = rq(sum_b GR[k][b] dD[c][b] + (c < M2) sum_a GR[k][a] dD[a][c])
 * with dD[c][b] = dD[c M2 + b].  Only for an atom whose sums stay below 2^53 (the caller checks
 * (M1 + M2) max|GR| max|dD| + half < 2^53: the int64 path otherwise).  Scratch: dDT (M2 x M1), ext (4 x M1).
 * Returns whether anything saturated. */
bool dgr(const DescConsts &d, const double *GR, const double *dD, double *dDT, double *ext, double *dGR)
{
  const int m1 = d.m1, m2 = d.m2;
  VI flag{};
  if (d.band) {  // desc_band: GR[k][c] is the first factor of D[c][b] and the second of D[(c - b) mod M1][b]
    bool sat = false;
    for (int k = 0; k < 4; k++)
      for (int c = 0; c < m1; c++) {
        double acc = 0;  // 2 M2 <= M1 + M2 terms: the caller's bound holds
        for (int b = 0; b < m2; b++) {
          const int a = (c - b + m1) % m1;
          acc += GR[k * m1 + (c + b) % m1] * dD[c * m2 + b] + GR[k * m1 + a] * dD[a * m2 + b];
        }
        dGR[k * m1 + c] = clip1(sr1(acc, d.dgr), d.dgr_range, sat);
      }
    return sat;
  }
  for (int c = 0; c < m1; c++)
    for (int b = 0; b < m2; b++) dDT[b * m1 + c] = dD[c * m2 + b];
  // ext[k][c] = sum_a GR[k][a] dD[a][c] for c < M2, zero beyond
  for (int k = 0; k < 4; k++)
    for (int c = 0; c < m1; c++) {
      double e = 0;
      if (c < m2) {
        V acc = splat(0);
        for (int a = 0; a < m1; a += VW) acc = vfma(load(GR + k * m1 + a), load(dDT + c * m1 + a), acc);
        e = hsum(acc);
      }
      ext[k * m1 + c] = e;
    }
  const VShift s = vshift(d.dgr);
  const VRange range = vrange(d.dgr_range);
  for (int k = 0; k < 4; k++)
    for (int c = 0; c < m1; c += VW) {
      V acc = load(ext + k * m1 + c);
      for (int b = 0; b < m2; b++) acc = vfma(vbroadcast(GR + k * m1 + b), load(dDT + b * m1 + c), acc);
      store(dGR + k * m1 + c, clip(sr(acc, s), range, flag));
    }
  return any(flag);
}

namespace {
/* The fit_activation table (model/reference.py activation: table_lookup of |z|, one channel) for VW
 * values az >= 0: T(az) and T'(az), T' = 0 below the table's start, both 0 past its end (a zero row
 * there).  The reference keeps no flag of this lookup, so neither does this. */
inline void act_lookup(const ActTable &t, V az, V &y, V &dy)
{
  double lane[4][VW];  // xi, then the row's a b c
  VI below{};
#pragma GCC unroll 4
  for (int l = 0; l < VW; l++) {
    const int64_t z = int64_t(az[l]);
    const int64_t x = z < t.x_min ? t.x_min : z;
    const double *row = t.coef + 3 * size_t(std::min((x >> t.index_shift) - t.first_seg, t.nseg));
    below[l] = z < t.x_min ? -1 : 0;
    lane[0][l] = double((x >> (t.index_shift - t.xi_bits)) & t.xi_mask);
    lane[1][l] = row[0], lane[2][l] = row[1], lane[3][l] = row[2];
  }
  VI unflagged{};
  quad(load(lane[1]), load(lane[2]), load(lane[3]), load(lane[0]) * t.xi.mul, below, vshift(t.xi), vshift(t.y),
       vshift(t.dy), vrange(t.out), vrange(t.dout), y, dy, unflagged);
}
}  // namespace

/* A fitting layer's activation, row by row: z = sat(sr(acc) + b) (no flag: tanh4 is flat long before the
 * Z range ends, tanh within 2 LSB of +-1 there), y = phi(z) shifted to A, x = rq(x_prev + y) for a resnet
 * layer (flagged), else y; dphi = phi'(z).  phi: tanh4, or the layer's activation table (L.act) for
 * fit_activation tanh.  rowsat[r] |= any flag of row r. */
void activate(const LayerConsts &L, int rows, const double *acc, const double *xprev, double *x, double *dphi,
              uint8_t *rowsat)
{
  const int P = L.p_out;
  const V one = splat(L.one), two = splat(L.two), three4 = splat(L.three_quarters), zero = splat(0);
  for (int r = 0; r < rows; r++) {
    VI flag{}, unflagged{};
    const double *ar = acc + size_t(r) * size_t(P);
    for (int c = 0; c < P; c += VW) {
      const V z = clip(sr(load(ar + c), L.z) + load(L.b + c), L.z_range, unflagged);
      const V az = z < zero ? -z : z;
      V ya;
      if (L.act) {  // fit_activation tanh: sign(z) T(|z|), phi' = T'(|z|)
        V dy;
        act_lookup(*L.act, az, ya, dy);
        store(dphi + size_t(r) * size_t(P) + size_t(c), dy);
      } else {
        // tanh4 (model/reference.py): |za^2| <= 2^(2f+2), |xx (xx/16 - za/4)| <= 2^(2f+4): checked < 2^53
        const V za = az > two ? two : az;
        const V xx = sr(za * za, L.f);
        const V q = sr(xx * (sr(xx, L.r4) - sr(za, L.r2)), L.f);
        ya = za + q;
        const V dq = sr(xx * (sr(za, L.r2) - three4), L.f);
        store(dphi + size_t(r) * size_t(P) + size_t(c), az >= two ? zero : one + dq);
      }
      const V y = sr(z < zero ? -ya : ya, L.y);
      if (L.resnet) {
        store(x + size_t(r) * size_t(P) + size_t(c),
              clip(sr(load(xprev + size_t(r) * size_t(P) + size_t(c)) + y, L.a), L.a_range, flag));
      } else {
        store(x + size_t(r) * size_t(P) + size_t(c), y);
      }
    }
    if (any(flag)) rowsat[r] = 1;
  }
}

/* energy[r] = rq(x_r . w) (format E, flagged). */
void energy(const OutConsts &o, int rows, const double *x, double *e, uint8_t *rowsat)
{
  for (int r = 0; r < rows; r++) {
    V acc{};
    for (int c = 0; c < o.p; c += VW) acc = vfma(load(x + size_t(r) * size_t(o.p) + size_t(c)), load(o.w + c), acc);
    double v = sr1(hsum(acc), o.e);
    if (v < o.e_range.lo || v > o.e_range.hi) rowsat[r] = 1, v = v < o.e_range.lo ? o.e_range.lo : o.e_range.hi;
    e[r] = v;
  }
}

/* out[r] = rq(a[r] * b[r]) (or rq(a[r] + b[r]) when `add`), width P, flagged per row; b == nullptr: the
 * row vector b0 for every row. */
void combine(int rows, int P, const double *a, const double *b, const double *b0, bool add, const DShift &s,
             const DRange &range, double *out, uint8_t *rowsat)
{
  for (int r = 0; r < rows; r++) {
    VI flag{};
    const double *ar = a + size_t(r) * size_t(P);
    const double *br = b ? b + size_t(r) * size_t(P) : b0;
    double *o = out + size_t(r) * size_t(P);
    for (int c = 0; c < P; c += VW) {
      const V x = load(ar + c), y = load(br + c);
      store(o + c, clip(sr(add ? x + y : x * y, s), range, flag));
    }
    if (any(flag)) rowsat[r] = 1;
  }
}

/* out[r] = rq(a[r]) width P, flagged per row. */
void requant(int rows, int P, const double *a, const DShift &s, const DRange &range, double *out, uint8_t *rowsat)
{
  for (int r = 0; r < rows; r++) {
    VI flag{};
    for (int c = 0; c < P; c += VW) {
      const size_t q = size_t(r) * size_t(P) + size_t(c);
      store(out + q, clip(sr(load(a + q), s), range, flag));
    }
    if (any(flag)) rowsat[r] = 1;
  }
}

const Kernels KERNELS = {KERNEL_NAME, records, tail, gemm, embed, backward, activate, energy, combine, requant, maxabs, descriptor, dgr};
