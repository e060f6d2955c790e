/* The cpu device: model/reference.py's fixed-point pipeline in C++, bit for bit, on this machine's cores.
 *
 * It answers each chunk of wire words as model.reference.process_beats does (the reference device, the
 * hardware's self-check): per atom the energy word, one dE/dr word triple per record, the flags
 * (NEIGHBOR_OVERFLOW, BAD_TYPE, SATURATED, R_BELOW_MIN) and the tag, framed in `lanes` words per beat as
 * contract.wire.encode_results frames them (records' own SATURATED bits are zero there: the atom's flag
 * carries saturation).  An atom with more records than sum(sel) comes back with no records and flag
 * NEIGHBOR_OVERFLOW only; one with a type outside the type map or more records of a type than its sel
 * keeps its records, with zero dE/dr and zero energy.
 *
 * How (per chunk, in collect(); submit() only queues):
 *   1. the words are cut into atoms (framing checked as contract.wire.decode_atoms checks it);
 *   2. the live atoms, grouped by centre type, are taken BATCH_ATOMS of one type at a time by `threads`
 *      threads (each batch's results depend on nothing but its atoms, so any thread count gives the
 *      same words); all in vector kernels, float64 exact unless said:
 *        per record: r^2 (int64), the s and h tables, R;
 *        per atom: G(s), G'(s) for M1 channels and GR = sum R^T G, D (or int64);
 *        per batch: the fitting net forward and backward as GEMMs over its atoms, activations and
 *        requantizations;
 *        per atom dGR (or int64), per record dR, dGj, dS, dH, dU, dE/dr and the output words;
 *   3. the output words are written.
 * Every float64 value is an integer whose magnitude the model's formats bound below 2^53; open_cpu
 * checks each of those bounds (and the int64 ones) and refuses a model that would break one, naming the
 * layer or format (CpuModel below).  Kernels: cpu_kernels.h, compiled for AVX2+FMA and portably; the
 * AVX2 copy runs where the CPU has it (spec `cpu:generic` forces the portable one; `cpu:int64`, or
 * `cpu:generic,int64`, computes stages 6 and 9 in int64 for every atom: a cross-check, same words). */
#include "dpfpga/devices.h"
#include "dpfpga/wire.h"
#include "pipeline.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DPFPGA_CPU_X86 1
#endif

namespace dpfpga {

// ---- the pipeline text (pipeline.h) ---------------------------------------------------------------------

namespace {

Error text_error(const std::string &line, const std::string &why)
{
  const std::string shown = line.size() > 80 ? line.substr(0, 80) + "..." : line;
  return Error(ErrorKind::Model, "host model text: " + why + " in line '" + shown + "'");
}

template <typename T>
T read_one(std::istream &in, const std::string &line, const char *what)
{
  long long v;
  if (!(in >> v)) throw text_error(line, std::string("missing or bad ") + what);
  if (v < (long long)std::numeric_limits<T>::min() || v > (long long)std::numeric_limits<T>::max())
    throw text_error(line, std::string(what) + " out of range");
  return T(v);
}

PipelineFormat read_format(std::istream &in, const std::string &line)
{
  PipelineFormat f;
  f.bits = read_one<int>(in, line, "bits");
  f.frac = read_one<int>(in, line, "frac");
  f.is_signed = read_one<int>(in, line, "signed flag") != 0;
  if (f.bits < 1 || f.bits > 63) throw text_error(line, "format width outside 1..63 bits");
  return f;
}

std::vector<int64_t> read_values(std::istream &in, const std::string &line, size_t n)
{
  std::vector<int64_t> v;
  v.reserve(n);
  for (long long x; v.size() < n && in >> x;) v.push_back(x);
  std::string more;
  if (v.size() != n || (in >> more))
    throw text_error(line, std::to_string(n) + " values expected, got " + (v.size() != n ? std::to_string(v.size()) : "more"));
  return v;
}

PipelineLayer &layer_at(PipelineConstants &p, int t, int k, const std::string &line)
{
  if (t < 0 || k < 0 || t > 15 || k > 64) throw text_error(line, "centre type or layer index out of range");
  if (int(p.fit.size()) <= t) p.fit.resize(size_t(t) + 1);
  if (int(p.fit[size_t(t)].size()) <= k) p.fit[size_t(t)].resize(size_t(k) + 1);
  return p.fit[size_t(t)][size_t(k)];
}

}  // namespace

void parse_pipeline_line(PipelineConstants &p, const std::string &key, std::istream &in, const std::string &line)
{
  if (key == "pipeline_config") {
    p.m1 = read_one<int>(in, line, "M1");
    p.m2 = read_one<int>(in, line, "M2");
    p.norm_shift = read_one<int>(in, line, "norm_shift");
    p.desc_shift = read_one<int>(in, line, "desc_shift");
    p.config_given = true;
  } else if (key == "pipeline_format") {
    std::string name;
    if (!(in >> name)) throw text_error(line, "missing format name");
    p.formats[name] = read_format(in, line);
  } else if (key == "pipeline_table") {
    std::string name;
    if (!(in >> name)) throw text_error(line, "missing table name");
    PipelineTable &t = p.tables[name];
    t.x_frac = read_one<int>(in, line, "x_frac");
    t.seg_shift = read_one<int>(in, line, "seg_shift");
    t.xi_bits = read_one<int>(in, line, "xi_bits");
    t.x_min = read_one<int64_t>(in, line, "x_min");
    t.nseg = read_one<int>(in, line, "nseg");
    t.nch = read_one<int>(in, line, "nch");
    t.coef = read_format(in, line);
    t.out = read_format(in, line);
    t.dout = read_format(in, line);
    if (t.nseg < 1 || t.nch < 1 || t.nseg > (1 << 24) || t.nch > 4096) throw text_error(line, "bad table size");
    t.given = true;
  } else if (key == "pipeline_table_coef") {
    std::string name;
    if (!(in >> name)) throw text_error(line, "missing table name");
    auto it = p.tables.find(name);
    if (it == p.tables.end() || !it->second.given) throw text_error(line, "coefficients before their table's line");
    it->second.values = read_values(in, line, size_t(it->second.nseg) * size_t(it->second.nch) * 3);
  } else if (key == "pipeline_layer") {
    const int t = read_one<int>(in, line, "centre type"), k = read_one<int>(in, line, "layer");
    PipelineLayer &l = layer_at(p, t, k, line);
    l.n_in = read_one<int>(in, line, "n_in");
    l.n_out = read_one<int>(in, line, "n_out");
    l.wfrac = read_one<int>(in, line, "wfrac");
    l.resnet = read_one<int>(in, line, "resnet flag") != 0;
    if (l.n_in < 1 || l.n_out < 1 || l.n_in > 4096 || l.n_out > 4096) throw text_error(line, "bad layer shape");
    l.given = true;
  } else if (key == "pipeline_layer_w" || key == "pipeline_layer_b") {
    const int t = read_one<int>(in, line, "centre type"), k = read_one<int>(in, line, "layer");
    PipelineLayer &l = layer_at(p, t, k, line);
    if (!l.given) throw text_error(line, "weights before their layer's line");
    if (key == "pipeline_layer_w")
      l.w = read_values(in, line, size_t(l.n_in) * size_t(l.n_out));
    else
      l.b = read_values(in, line, size_t(l.n_out));
  } else if (key == "pipeline_out") {
    const int t = read_one<int>(in, line, "centre type");
    if (t < 0 || t > 15) throw text_error(line, "centre type out of range");
    const int wfrac = read_one<int>(in, line, "wfrac");
    std::vector<int64_t> w;
    for (long long x; in >> x;) w.push_back(x);
    if (!in.eof()) throw text_error(line, "bad output weight");
    if (int(p.out_w.size()) <= t) p.out_w.resize(size_t(t) + 1), p.out_wfrac.resize(size_t(t) + 1), p.out_given.resize(size_t(t) + 1);
    p.out_w[size_t(t)] = std::move(w);
    p.out_wfrac[size_t(t)] = wfrac;
    p.out_given[size_t(t)] = true;
  } else if (key == "pipeline_options") {
    for (std::string o; in >> o;) p.options.push_back(o);
  } else if (key == "pipeline_table_first_seg") {
    std::string name;
    if (!(in >> name)) throw text_error(line, "missing table name");
    auto it = p.tables.find(name);
    if (it == p.tables.end() || !it->second.given) throw text_error(line, "first_seg before its table's line");
    it->second.first_seg = read_one<int64_t>(in, line, "first_seg");
  } else if (key == "pipeline_pad") {
    const int ct = read_one<int>(in, line, "centre type"), t = read_one<int>(in, line, "neighbour type");
    if (!p.config_given || ct < 0 || t < 0 || ct > 15 || t > 15) throw text_error(line, "pad before pipeline_config, or type out of range");
    const std::vector<int64_t> v = read_values(in, line, size_t(p.m1));
    const size_t at = (size_t(ct) * 16 + size_t(t)) * size_t(p.m1);  // compacted to ntypes by CpuModel
    if (p.pad.size() < at + size_t(p.m1)) p.pad.resize(at + size_t(p.m1));
    std::copy(v.begin(), v.end(), p.pad.begin() + long(at));
  } else {
    throw Error(ErrorKind::Model, "host model text: unknown key '" + key + "'");
  }
}

// ---- the kernels' constants -----------------------------------------------------------------------------

namespace {

constexpr int GEMM_ROWS = 6;      // rows of the GEMM micro-kernel (a type's rows are padded to a multiple)
constexpr int MAX_M1 = 256;       // embedding width the kernels' stack buffers hold
constexpr size_t BATCH_ATOMS = 48;  // atoms per unit of work: their fitting GEMMs, their records in cache

/* sr(v) = floor((v + half) * mul) = floor(v * mul + hmul): the reference's shift_round by k, exact on
 * float64 integers (cpu_kernels.h). */
struct DShift {
  double half = 0, mul = 1, hmul = 0;  // 2^(k-1) (0 for k <= 0), 2^-k, half * mul
};
struct DRange {
  double lo = 0, hi = 0;
};

/* Stages 1-3 and stage 10's last steps, per record in float64 (every value an integer below 2^53: see
 * CpuModel).  The s and h tables share one grid over u = r^2 (model/quantize.py u_tables), so one
 * segment row holds both: s a b c, h a b c, 0, 0 (one cache line of float64); a row of zeros past the last
 * segment gives the reference's y = y' = 0 there, with no flag. */
struct RecConsts {
  const double *coef = nullptr;  // (nseg + 1) rows of 8: the atom's centre type's (env_norm: one per type)
  int64_t nseg = 0, x_min = 0, xi_mask = 0, first_seg = 0;
  int index_shift = 0, xi_bits = 0;
  DShift xi, s_y, s_dy, h_y, h_dy, r0, rh;  // tables, then R = (rq s, rq h d)
  DRange s_out, s_dout, h_out, h_dout, R;
  DShift ds_r, dh, du_s, du_h, f_r, f_u;  // stage 10: dS, dH, dU, dE/dr
  DRange dS, dH, dU, F;
};
/* One atom's per-record arrays in a batch's workspace: record j of the atom at index j; room for the
 * record count rounded up to RECORD_PAD. */
struct RecordRows {
  int32_t *type;
  double *dx, *dy, *dz, *s, *ds, *h, *dh;  // d, and the s and h tables' values and slopes
  double *R;                               // 4 per record: (R0, R1, R2, R3)
  double *dR;                              // 4 rows of stride ld: dR_k of record j at dR[k ld + j]
  size_t ld;
  double *dSg;
};
constexpr int RECORD_PAD = 4;  // a multiple of every kernel set's vector width

struct GTable {  // one neighbour type's G table, coefficients [segment][a b c][channel] (float64: no
                 // int-to-float conversions in the embed kernel, whose conversion pipe is its bottleneck)
  const double *coef = nullptr;
  const uint8_t *safe = nullptr;  // per segment: G and G' inside their formats for every xi and channel
  int64_t nseg = 0, x_min = 0, xi_mask = 0, first_seg = 0;  // row 0 is segment first_seg (env_norm: s < 0)
  int index_shift = 0, xi_bits = 0;
  DShift xi, y, dy;
  DRange out, dout;
};
struct EmbedConsts {
  int m1 = 0;
  std::vector<GTable> g;
  DShift gr;
  DRange gr_range;
};
struct BackConsts {
  int m1 = 0;
  DShift dr, dgj, dsg;
  DRange dr_range, dgj_range;
};
struct DescConsts {  // stages 6 and 9 in float64 (atoms whose sums stay below 2^53)
  int m1 = 0, m2 = 0;
  bool band = false;  // desc_band: D[a][b] = T[a][(a + b) mod M1] (NVNMD's banded descriptor), not T[a][b]
  DShift d, dgr;
  DRange d_range, dgr_range;
};
/* fit_activation "tanh": the odd activation's table T over |z| (one channel, Z's fraction bits in and out),
 * coefficients a b c per segment and a zero row past the last. */
struct ActTable {
  const double *coef = nullptr;
  int64_t nseg = 0, x_min = 0, xi_mask = 0, first_seg = 0;
  int index_shift = 0, xi_bits = 0;
  DShift xi, y, dy;
  DRange out, dout;
};
struct LayerConsts {
  int n_in = 0, n_out = 0, p_in = 0, p_out = 0;
  bool resnet = false;
  std::vector<double> w_packed, wt_packed;  // gemm panels of W (n_in x p_out) and W^T (n_out x p_in)
  const double *b = nullptr;                // p_out, format Z
  std::vector<double> b_store;
  DShift z, f, r2, r4, y, a;
  DRange z_range, a_range;
  double one = 0, two = 0, three_quarters = 0;  // tanh4's 1, 2 and 3/4 with f fraction bits
  const ActTable *act = nullptr;                // fit_activation tanh: its table instead of tanh4
  DShift delta, back;                           // backward: rq(dphi g) to DELTA; rq(delta W^T) to GA or dD
  DRange back_range;
};
struct OutConsts {
  int p = 0;
  const double *w = nullptr;
  std::vector<double> w_store;
  DShift e;
  DRange e_range;
};

typedef void (*GemmFn)(int, int, int, const double *, int, const double *, double *, int);
typedef bool (*RecordsFn)(const RecConsts &, int, const uint64_t *, const RecordRows &, bool &);
typedef bool (*TailFn)(const RecConsts &, int, const RecordRows &, uint64_t *);
typedef bool (*EmbedFn)(const EmbedConsts &, int, const int32_t *, const double *, const double *, const double *,
                        double *, double *, double *, const double **, double *, uint8_t *);
typedef bool (*BackFn)(const BackConsts &, int, const double *, const double *, const double *, const double *, double *,
                       size_t, double *);
typedef void (*ActivateFn)(const LayerConsts &, int, const double *, const double *, double *, double *, uint8_t *);
typedef void (*EnergyFn)(const OutConsts &, int, const double *, double *, uint8_t *);
typedef void (*CombineFn)(int, int, const double *, const double *, const double *, bool, const DShift &,
                          const DRange &, double *, uint8_t *);
typedef void (*RequantFn)(int, int, const double *, const DShift &, const DRange &, double *, uint8_t *);
typedef double (*MaxAbsFn)(int, const double *);
typedef bool (*DescriptorFn)(const DescConsts &, const double *, double *);
typedef bool (*DgrFn)(const DescConsts &, const double *, const double *, double *, double *, double *);

struct Kernels {
  const char *name;
  RecordsFn records;
  TailFn tail;
  GemmFn gemm;
  EmbedFn embed;
  BackFn backward;
  ActivateFn activate;
  EnergyFn energy;
  CombineFn combine;
  RequantFn requant;
  MaxAbsFn maxabs;
  DescriptorFn descriptor;
  DgrFn dgr;
};

}  // namespace

// ---- the two copies of the kernels -------------------------------------------------------------------

namespace cpu_generic {
constexpr int VW = 2;
typedef double V __attribute__((vector_size(16)));
typedef int64_t VI __attribute__((vector_size(16)));
namespace {
inline V vfloor(V x) { return V{std::floor(x[0]), std::floor(x[1])}; }
inline V vfma(V a, V b, V c) { return a * b + c; }
inline V vmin(V a, V b) { return a < b ? a : b; }
inline V vmax(V a, V b) { return a > b ? a : b; }
inline V vbroadcast(const double *p) { return V{*p, *p}; }
/* out[q] = the sum of aq's lanes (exact: integers below 2^53, any order) */
inline void hsum4(V a0, V a1, V a2, V a3, double *out)
{
  out[0] = a0[0] + a0[1], out[1] = a1[0] + a1[1], out[2] = a2[0] + a2[1], out[3] = a3[0] + a3[1];
}
}  // namespace
#define KERNEL_NAME "portable"
#include "cpu_kernels.h"
#undef KERNEL_NAME
}  // namespace cpu_generic

#ifdef DPFPGA_CPU_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace cpu_avx2 {
constexpr int VW = 4;
typedef double V __attribute__((vector_size(32)));
typedef int64_t VI __attribute__((vector_size(32)));
namespace {
inline V vfloor(V x) { return _mm256_floor_pd(x); }
// Fused: exact all the same, every product and sum being an integer below 2^53 (cpu_kernels.h).
inline V vfma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
inline V vmin(V a, V b) { return _mm256_min_pd(a, b); }
inline V vmax(V a, V b) { return _mm256_max_pd(a, b); }
inline V vbroadcast(const double *p) { return _mm256_broadcast_sd(p); }
/* out[q] = the sum of aq's lanes (exact: integers below 2^53, any order): two horizontal adds and one
 * cross-lane add instead of four reductions */
inline void hsum4(V a0, V a1, V a2, V a3, double *out)
{
  const __m256d h01 = _mm256_hadd_pd(a0, a1), h23 = _mm256_hadd_pd(a2, a3);  // (a0 01, a1 01, a0 23, a1 23)
  const __m256d lo = _mm256_permute2f128_pd(h01, h23, 0x20), hi = _mm256_permute2f128_pd(h01, h23, 0x31);
  _mm256_storeu_pd(out, _mm256_add_pd(lo, hi));
}
}  // namespace
#define KERNEL_NAME "avx2+fma"
#include "cpu_kernels.h"
#undef KERNEL_NAME
}  // namespace cpu_avx2
#pragma GCC pop_options
#endif

namespace {

namespace w = wire;

// ---- the model, checked -----------------------------------------------------------------------------

int pad8(int n) { return (n + 7) / 8 * 8; }
int ceil_log2(int64_t n)
{
  int k = 0;
  while ((int64_t(1) << k) < n) k++;
  return k;
}

/* The reference's shift_round(v, k) on int64 (callers' bounds keep v * 2^-k inside int64). */
inline int64_t sr64(int64_t v, int k)
{
  if (k > 0) return (v + (int64_t(1) << (k - 1))) >> k;
  return k < 0 ? v * (int64_t(1) << -k) : v;
}
inline int64_t sat64(int64_t v, const PipelineFormat &f, bool &flag)
{
  if (v < f.lo()) return flag = true, f.lo();
  if (v > f.hi()) return flag = true, f.hi();
  return v;
}

class CpuModel {
 public:
  int ntypes = 0, m1 = 0, m2 = 0, sum_sel = 0;
  std::vector<int> sel;
  std::map<std::string, PipelineFormat> F;
  std::vector<double> sh_coef;               // the s and h tables' rows (RecConsts), per channel
  std::vector<RecConsts> rec;                // per centre type (env_norm: its channel's rows; else all alike)
  std::vector<double> pad;                   // pad_slots: [centre type][neighbour type][M1], else empty
  std::vector<std::vector<double>> g_coef;   // per neighbour type
  std::vector<std::vector<uint8_t>> g_safe;  // per neighbour type and segment: GTable::safe
  EmbedConsts embed;
  BackConsts back;
  DescConsts desc;
  double d_fast_max = 0, dgr_fast_max = 0;  // the float64 paths of stages 6 and 9: see fitting()
  std::vector<std::vector<LayerConsts>> fit;  // per centre type
  std::vector<double> act_coef;              // fit_activation tanh: the table's rows (ActTable)
  ActTable act;
  std::vector<OutConsts> out;
  std::vector<std::vector<double>> g0;      // per centre type: rq(out_w) to GA, the backward pass's start
  std::vector<uint8_t> g0_sat;              // ... and whether that saturated (every atom of the type)
  int k_d = 0, k_dgr = 0;  // stages 6 and 9 in int64 (for atoms the float64 paths cannot take)

  /* int64_stages: stages 6 and 9 in int64 for every atom (spec `cpu:int64`), not float64 where exact. */
  explicit CpuModel(const HostModel &hm, bool int64_stages = false);

  const PipelineFormat &fmt(const char *name) const { return F.at(name); }

 private:
  std::string why_;
  void need(bool ok, const std::string &what) const
  {
    if (!ok) throw Error(ErrorKind::Model, "cpu device: model " + why_ + "refused: " + what);
  }
  const PipelineFormat &format(const PipelineConstants &p, const char *name)
  {
    auto it = p.formats.find(name);
    need(it != p.formats.end(), std::string("format ") + name + " missing from the pipeline text");
    return it->second;
  }
  /* A float64 value bounded by 2^mag is exact, and so is its shift by k, when mag <= 52 (and the
   * shifted value too, for a left shift): checked, naming `what`. */
  DShift dshift(int k, int mag, const std::string &what) const
  {
    need(mag <= 52, what + ": values up to 2^" + std::to_string(mag) +
                        " (float64 holds integers exactly only up to 2^53)");
    need(k <= 52 && mag - std::min(k, 0) <= 52, what + ": shift by " + std::to_string(k) + " of values up to 2^" +
                                                    std::to_string(mag) + " is not exact in float64");
    DShift s;
    s.half = k > 0 ? std::ldexp(1.0, k - 1) : 0.0;
    s.mul = std::ldexp(1.0, -k);
    s.hmul = s.half * s.mul;
    return s;
  }
  /* An int64 value bounded by 2^mag (and its shift by k) stays inside int64 when mag <= 62. */
  int ishift(int k, int mag, const std::string &what) const
  {
    need(mag <= 61 && mag - std::min(k, 0) <= 61 && k <= 62,
         what + ": values up to 2^" + std::to_string(mag) + " shifted by " + std::to_string(k) + " overflow int64");
    return k;
  }
  static DRange range(const PipelineFormat &f) { return {double(f.lo()), double(f.hi())}; }
  void check_table(const PipelineTable &t, const std::string &name, int nch);
  void table_consts(const PipelineTable &t, const std::string &name, int64_t &nseg, int64_t &x_min, int64_t &xi_mask,
                    int64_t &first_seg, int &index_shift, int &xi_bits, DShift &xi, DShift &y, DShift &dy,
                    DRange &out, DRange &dout) const;
  static std::vector<uint8_t> safe_segments(const PipelineTable &t);
};

/* Per segment of a G table: 1 when, for every xi and every channel, the value and the slope (model/reference.py
 * table_lookup, int64 as there) lie inside their formats, so that the embed kernel may skip clipping
 * them (clipping would change nothing and flag nothing).  Every xi is tried: 2^xi_bits per segment. */
std::vector<uint8_t> CpuModel::safe_segments(const PipelineTable &t)
{
  const int kb = t.xi_bits, ky = t.coef.frac - t.out.frac, kd = t.coef.frac - t.seg_shift - t.dout.frac;
  // Wider positions than 2^12 per segment would make this check slow: then every segment clips.
  std::vector<uint8_t> safe(size_t(t.nseg), kb <= 12);
  if (kb > 12) return safe;
  for (int s = 0; s < t.nseg; s++) {
    bool flag = false;
    for (int ch = 0; ch < t.nch && !flag; ch++) {
      const int64_t *c = &t.values[(size_t(s) * size_t(t.nch) + size_t(ch)) * 3];
      for (int64_t xi = 0; xi < (int64_t(1) << kb) && !flag; xi++) {
        const int64_t tt = sr64(c[2] * xi, kb);
        sat64(sr64(c[0] + sr64((c[1] + tt) * xi, kb), ky), t.out, flag);
        sat64(sr64(c[1] + 2 * tt, kd), t.dout, flag);
      }
    }
    safe[size_t(s)] = !flag;
  }
  return safe;
}

void CpuModel::check_table(const PipelineTable &t, const std::string &name, int nch)
{
  need(t.given && t.values.size() == size_t(t.nseg) * size_t(t.nch) * 3, "table " + name + " missing or incomplete");
  need(t.nch == nch, "table " + name + " has " + std::to_string(t.nch) + " channels, expected " + std::to_string(nch));
  need(t.xi_bits >= 1 && t.x_frac - t.seg_shift >= t.xi_bits && t.x_frac - t.seg_shift <= 62,
       "table " + name + ": xi_bits " + std::to_string(t.xi_bits) + " outside [1, x_frac - seg_shift]");
  // an input raised to x_min falls in a segment with a coefficient row: row 0 is segment first_seg
  need((t.x_min >> (t.x_frac - t.seg_shift)) >= t.first_seg,
       "table " + name + ": x_min " + std::to_string(t.x_min) + " lies before its first segment " +
           std::to_string(t.first_seg));
  for (int64_t c : t.values)
    need(c >= t.coef.lo() && c <= t.coef.hi(), "table " + name + ": coefficient " + std::to_string(c) +
                                                   " outside " + t.coef.describe());
}

/* A quadratic table's lookup constants (model/reference.py table_lookup) and the exactness of its float64
 * steps: |c xi| < 2^(coef + xi_bits); |(b + t) xi| < 2^(coef + 1 + xi_bits); |a + ...|, |b + 2t| < 2^(coef + 2). */
void CpuModel::table_consts(const PipelineTable &t, const std::string &name, int64_t &nseg, int64_t &x_min,
                            int64_t &xi_mask, int64_t &first_seg, int &index_shift, int &xi_bits, DShift &xi, DShift &y,
                            DShift &dy, DRange &out, DRange &dout) const
{
  nseg = t.nseg, x_min = t.x_min, first_seg = t.first_seg;
  index_shift = t.x_frac - t.seg_shift, xi_bits = t.xi_bits;
  xi_mask = (int64_t(1) << t.xi_bits) - 1;
  const int cm = t.coef.magnitude();
  xi = dshift(t.xi_bits, cm + 1 + t.xi_bits, "table " + name + " (b + c xi) xi");
  y = dshift(t.coef.frac - t.out.frac, cm + 2, "table " + name + " value");
  dy = dshift(t.coef.frac - t.seg_shift - t.dout.frac, cm + 2, "table " + name + " slope");
  need(t.out.magnitude() <= 52 && t.dout.magnitude() <= 52, "table " + name + ": values wider than float64's exact integers");
  out = range(t.out), dout = range(t.dout);
}

CpuModel::CpuModel(const HostModel &hm, bool int64_stages)
{
  need(bool(hm.pipeline), "the host model text has no pipeline_* lines (host/native.py: host_model_text(qm, "
                          "pipeline=True); `python -m host native-model` prints them)");
  const PipelineConstants &p = *hm.pipeline;
  why_ = hm.hash.substr(0, 12) + " ";
  ntypes = hm.ntypes;
  sel = hm.sel;
  sum_sel = hm.sum_sel();
  need(p.config_given, "pipeline_config missing");
  // the model's options (contract.config.OPTIONS): each changes a step below; any other is refused by name
  bool env_norm = false, pad_slots = false, act_table = false;
  for (const std::string &o : p.options) {
    if (o == "env_norm") env_norm = true;
    else if (o == "pad_slots") pad_slots = true;
    else if (o == "fit_activation") act_table = true;
    else if (o == "desc_band") desc.band = true;
    else if (o == "embed_table") continue;  // the G tables were made from tables, not nets: nothing differs here
    else need(false, "option " + o + " is not computed by the cpu device");
  }
  m1 = p.m1, m2 = p.m2;
  need(m1 >= 1 && m1 <= MAX_M1 && m1 % 4 == 0, "embedding width M1 = " + std::to_string(m1) +
                                                   " (the cpu device takes multiples of 4 up to " +
                                                   std::to_string(MAX_M1) + ")");
  need(m2 >= 1 && m2 <= m1, "M2 = " + std::to_string(m2) + " outside [1, M1]");
  const int ns = p.norm_shift, ds = p.desc_shift;
  for (const char *name : {"coord", "s", "h", "ds", "dh", "R", "G", "dG", "GR", "D", "Z", "A", "E", "GA", "DELTA",
                           "dD", "dGR", "dR", "dGj", "dS", "dH", "dU", "F", "W"})
    F[name] = format(p, name);
  auto mag = [&](const char *name) { return fmt(name).magnitude(); };
  auto fr = [&](const char *name) { return fmt(name).frac; };
  need(fmt("coord").bits <= int(w::COORD_BITS) && fmt("F").bits <= 62 && fmt("E").bits <= 62,
       "coord wider than the wire's COORD_BITS");

  // -- stages 1-3 (float64, per record): u = |d|^2 <= 3 * 2^(2 coord) (int64); tables s and h; R
  ishift(0, 2 * mag("coord") + 2, "r^2");
  const PipelineTable *tab[2];
  // env_norm: one channel per centre type (channel t holds centre type t's normalised s, h), else one
  const int nch = env_norm ? ntypes : 1;
  for (int q = 0; q < 2; q++) {
    const char *name = q ? "h" : "s";
    auto it = p.tables.find(name);
    need(it != p.tables.end(), std::string("table ") + name + " missing");
    tab[q] = &it->second;
    check_table(*tab[q], name, nch);
  }
  const PipelineTable &ts = *tab[0], &th = *tab[1];
  need(ts.x_frac == th.x_frac && ts.seg_shift == th.seg_shift && ts.xi_bits == th.xi_bits && ts.x_min == th.x_min &&
           ts.nseg == th.nseg && ts.first_seg == th.first_seg,
       "tables s and h on different grids (x_frac, seg_shift, xi_bits, x_min, nseg, first_seg): the cpu device "
       "reads both with one lookup");
  const size_t rows = size_t(ts.nseg) + 1;
  sh_coef.assign(size_t(nch) * rows * 8, 0);
  for (int ch = 0; ch < nch; ch++)
    for (int64_t g = 0; g < ts.nseg; g++)
      for (int a = 0; a < 3; a++) {
        const size_t from = (size_t(g) * size_t(nch) + size_t(ch)) * 3 + size_t(a), to = (size_t(ch) * rows + size_t(g)) * 8;
        sh_coef[to + size_t(a)] = double(ts.values[from]);
        sh_coef[to + 3 + size_t(a)] = double(th.values[from]);
      }
  RecConsts rc;
  for (int q = 0; q < 2; q++) {
    const PipelineTable &t = *tab[q];
    DShift xi;
    table_consts(t, q ? "h" : "s", rc.nseg, rc.x_min, rc.xi_mask, rc.first_seg, rc.index_shift, rc.xi_bits, xi,
                 q ? rc.h_y : rc.s_y, q ? rc.h_dy : rc.s_dy, q ? rc.h_out : rc.s_out, q ? rc.h_dout : rc.s_dout);
    rc.xi = xi;  // the same for both: their xi_bits are equal (checked above)
  }
  rc.r0 = dshift(fr("s") - fr("R"), mag("s"), "R from s");
  rc.rh = dshift(fr("h") + fr("coord") - fr("R"), mag("h") + mag("coord"), "R from h d");
  rc.R = range(fmt("R"));

  // -- stages 4-5 (float64): G tables; GR = rq(sum_j R_j^T G_j) over at most sum(sel) records
  embed.m1 = back.m1 = m1;
  g_coef.resize(size_t(ntypes));
  for (int t = 0; t < ntypes; t++) {
    const std::string name = "g" + std::to_string(t);
    auto it = p.tables.find(name);
    need(it != p.tables.end(), "table " + name + " missing");
    const PipelineTable &pt = it->second;
    check_table(pt, name, m1);
    auto &c = g_coef[size_t(t)];
    c.resize(pt.values.size());
    for (int s = 0; s < pt.nseg; s++)
      for (int ch = 0; ch < m1; ch++)
        for (int a = 0; a < 3; a++)
          c[(size_t(s) * 3 + size_t(a)) * size_t(m1) + size_t(ch)] = double(pt.values[(size_t(s) * size_t(m1) + size_t(ch)) * 3 + size_t(a)]);
    GTable g;
    table_consts(pt, name, g.nseg, g.x_min, g.xi_mask, g.first_seg, g.index_shift, g.xi_bits, g.xi, g.y, g.dy, g.out,
                 g.dout);
    g_safe.push_back(safe_segments(pt));  // after the bounds above: int64 holds every step
    embed.g.push_back(g);
  }
  for (int t = 0; t < ntypes; t++) embed.g[size_t(t)].coef = g_coef[size_t(t)].data(), embed.g[size_t(t)].safe = g_safe[size_t(t)].data();
  // pad_slots: an atom's sel[t] - n_t empty slots of each type t add the `pipeline_pad` product of
  // (centre type, t) to GR's first row, |product| <= |R0| |G|: with the records, still sum(sel) terms
  if (pad_slots) {
    const size_t mm = size_t(m1), nt = size_t(ntypes);
    need(p.pad.size() >= ((nt - 1) * 16 + nt) * mm, "pad_slots without its pipeline_pad lines");
    const double bound = std::ldexp(1.0, mag("R") + mag("G"));
    for (size_t ct = 0; ct < nt; ct++)
      for (size_t t = 0; t < nt; t++)
        for (size_t c = 0; c < mm; c++) {
          const int64_t v = p.pad[(ct * 16 + t) * mm + c];
          need(std::fabs(double(v)) <= bound, "pad_slots product " + std::to_string(v) + " (centre type " +
                                                  std::to_string(ct) + ", type " + std::to_string(t) +
                                                  ") larger than R times G");
          pad.push_back(double(v));
        }
  }
  embed.gr = dshift(fr("R") + fr("G") + ns - fr("GR"), mag("R") + mag("G") + ceil_log2(sum_sel),
                    "GR = sum over sum(sel) records of R (" + fmt("R").describe() + ") G (" + fmt("G").describe() + ")");
  embed.gr_range = range(fmt("GR"));

  // -- stage 6 (int64): D = rq(GR^T GR[:, :M2]), 4 terms
  k_d = ishift(2 * fr("GR") - ds - fr("D"), 2 * mag("GR") + 2, "D = GR^T GR");
  // ... and in float64 for an atom with 4 max|GR|^2 + half < 2^53 (typical atoms: |GR| ~ 2^21 of 2^26)
  desc.m1 = m1, desc.m2 = m2;
  desc.d = dshift(2 * fr("GR") - ds - fr("D"), 0, "D");
  desc.d_range = range(fmt("D"));
  d_fast_max = std::ldexp(1.0, 53 + std::min(2 * fr("GR") - ds - fr("D"), 0)) - desc.d.half;

  // -- stages 7-8: the fitting nets (float64 GEMMs)
  const PipelineFormat &W = fmt("W");
  const int fz = fr("Z"), fa = fr("A");
  // phi and phi' as bounds: tanh4's |y| <= 2^fz and 0 <= phi' <= 2^fz; the tanh table's, inside Z
  int phi_mag = fz;
  if (act_table) {
    auto it = p.tables.find("act");
    need(it != p.tables.end(), "fit_activation without its table act");
    const PipelineTable &at = it->second;
    check_table(at, "act", 1);
    need(at.x_frac == fz && at.out.frac == fz && at.dout.frac == fz && at.out.bits <= fmt("Z").bits &&
             at.dout.bits <= fmt("Z").bits,
         "table act: input and outputs not in Z's fraction bits (" + fmt("Z").describe() + ")");
    table_consts(at, "act", act.nseg, act.x_min, act.xi_mask, act.first_seg, act.index_shift, act.xi_bits, act.xi,
                 act.y, act.dy, act.out, act.dout);
    act_coef.assign((size_t(at.nseg) + 1) * 3, 0.0);  // a zero row past the last segment
    for (size_t v = 0; v < at.values.size(); v++) act_coef[v] = double(at.values[v]);
    act.coef = act_coef.data();
    phi_mag = mag("Z");
  } else {
    need(fz >= 2 && 2 * fz + 4 <= 52, "Z " + fmt("Z").describe() + ": tanh4 needs 2 <= frac and 2 frac + 4 <= 52 "
                                      "(|xx (xx/16 - za/4)| < 2^(2 frac + 4) in float64)");
  }
  need(int(p.fit.size()) == ntypes && int(p.out_w.size()) == ntypes, "fitting nets missing for some centre type");
  fit.resize(size_t(ntypes));
  out.resize(size_t(ntypes));
  g0.resize(size_t(ntypes));
  g0_sat.assign(size_t(ntypes), 0);
  for (int t = 0; t < ntypes; t++) {
    const auto &layers = p.fit[size_t(t)];
    need(!layers.empty(), "fit[" + std::to_string(t) + "] has no layers");
    int n_in = m1 * m2, mag_in = mag("D");
    std::string in_name = "D " + fmt("D").describe();
    int xfrac = fr("D");
    for (size_t k = 0; k < layers.size(); k++) {
      const PipelineLayer &pl = layers[k];
      const std::string where = "fit[" + std::to_string(t) + "] layer " + std::to_string(k);
      need(pl.given && pl.w.size() == size_t(pl.n_in) * size_t(pl.n_out) && pl.b.size() == size_t(pl.n_out),
           where + " missing or incomplete");
      need(pl.n_in == n_in, where + ": input width " + std::to_string(pl.n_in) + ", expected " + std::to_string(n_in));
      need(!pl.resnet || pl.n_in == pl.n_out, where + ": resnet with n_in != n_out");
      const PipelineFormat wf{W.bits, pl.wfrac, W.is_signed};
      int64_t bmax = 0;
      for (int64_t v : pl.w) need(v >= wf.lo() && v <= wf.hi(), where + ": weight " + std::to_string(v) + " outside " + wf.describe());
      for (int64_t v : pl.b) bmax = std::max(bmax, v < 0 ? -v : v);
      LayerConsts L;
      L.n_in = pl.n_in, L.n_out = pl.n_out, L.p_in = pad8(pl.n_in), L.p_out = pad8(pl.n_out), L.resnet = pl.resnet;
      // forward sum: |x| <= 2^mag_in, |w| <= 2^(W bits - 1), n_in terms
      const int mag_acc = mag_in + wf.magnitude() + ceil_log2(pl.n_in);
      L.z = dshift(xfrac + pl.wfrac - fz, mag_acc,
                   where + " forward sum x (" + in_name + ") W (" + wf.describe() + ") over " + std::to_string(pl.n_in));
      need(std::max(mag_acc - std::max(xfrac + pl.wfrac - fz, 0), ceil_log2(bmax + 1)) + 1 <= 52,
           where + ": bias beyond float64's exact range");
      L.z_range = range(fmt("Z"));
      if (act_table) {
        L.act = &act;
      } else {
        L.f = dshift(fz, 2 * fz + 4, where + " tanh4");
        L.r2 = dshift(2, fz + 2, where + " tanh4");
        L.r4 = dshift(4, fz + 3, where + " tanh4");
      }
      L.y = dshift(fz - fa, phi_mag + 1, where + " activation to A");
      L.a = dshift(fa - fr("A"), std::max(mag_in, fa) + 1, where + " resnet sum");
      L.a_range = range(fmt("A"));
      L.one = std::ldexp(1.0, fz), L.two = std::ldexp(1.0, fz + 1), L.three_quarters = 3 * std::ldexp(1.0, fz - 2);
      // backward: delta = rq(dphi g): |dphi| <= 2^fz, |g| <= 2^GA; back = delta W^T, n_out terms
      L.delta = dshift(fz + fr("GA") - fr("DELTA"), phi_mag + mag("GA"), where + " delta = dphi g");
      const bool first = k == 0;
      L.back = dshift(fr("DELTA") + pl.wfrac - fr(first ? "dD" : "GA"),
                      mag("DELTA") + wf.magnitude() + ceil_log2(pl.n_out),
                      where + " backward sum delta (" + fmt("DELTA").describe() + ") W (" + wf.describe() + ") over " +
                          std::to_string(pl.n_out));
      L.back_range = range(fmt(first ? "dD" : "GA"));
      if (!first && pl.resnet) dshift(0, mag("GA") + 1, where + " backward resnet sum");
      // GEMM panels: W (n_in rows, n_out columns padded) and W^T (n_out rows, n_in columns padded)
      auto pack = [](const std::vector<int64_t> &src, int rows, int cols, bool transpose) {
        const int panels = pad8(cols) / 8;
        std::vector<double> out(size_t(panels) * size_t(rows) * 8, 0.0);
        for (int r = 0; r < rows; r++)
          for (int c = 0; c < cols; c++) {
            const int64_t v = transpose ? src[size_t(c) * size_t(rows) + size_t(r)] : src[size_t(r) * size_t(cols) + size_t(c)];
            out[(size_t(c / 8) * size_t(rows) + size_t(r)) * 8 + size_t(c % 8)] = double(v);
          }
        return out;
      };
      L.w_packed = pack(pl.w, pl.n_in, pl.n_out, false);
      L.wt_packed = pack(pl.w, pl.n_out, pl.n_in, true);
      L.b_store.assign(size_t(L.p_out), 0.0);
      for (int c = 0; c < pl.n_out; c++) L.b_store[size_t(c)] = double(pl.b[size_t(c)]);
      fit[size_t(t)].push_back(std::move(L));
      // the next layer's input: rq to A (resnet) or phi shifted to A, |y| <= 2^(phi_mag - fz + fa) + 1
      mag_in = pl.resnet ? mag("A") : std::max(phi_mag - fz + fa, 0) + 1;
      in_name = "A " + fmt("A").describe();
      xfrac = fa;
      n_in = pl.n_out;
    }
    for (auto &L : fit[size_t(t)]) L.b = L.b_store.data();
    need(p.out_given[size_t(t)] && int(p.out_w[size_t(t)].size()) == n_in,
         "fit[" + std::to_string(t) + "] output weights missing or not " + std::to_string(n_in) + " long");
    const int owf = p.out_wfrac[size_t(t)];
    const PipelineFormat of{W.bits, owf, W.is_signed};
    OutConsts &o = out[size_t(t)];
    o.p = pad8(n_in);
    o.w_store.assign(size_t(o.p), 0.0);
    g0[size_t(t)].assign(size_t(o.p), 0.0);
    bool gsat = false;
    const int kg = ishift(owf - fr("GA"), of.magnitude(), "output weights to GA");
    for (int c = 0; c < n_in; c++) {
      const int64_t v = p.out_w[size_t(t)][size_t(c)];
      need(v >= of.lo() && v <= of.hi(), "fit[" + std::to_string(t) + "] output weight " + std::to_string(v) +
                                             " outside " + of.describe());
      o.w_store[size_t(c)] = double(v);
      g0[size_t(t)][size_t(c)] = double(sat64(sr64(v, kg), fmt("GA"), gsat));
    }
    g0_sat[size_t(t)] = gsat;
    o.w = o.w_store.data();
    o.e = dshift(fa + owf - fr("E"), mag_in + of.magnitude() + ceil_log2(n_in),
                 "fit[" + std::to_string(t) + "] energy sum x (A " + fmt("A").describe() + ") w (" + of.describe() + ")");
    o.e_range = range(fmt("E"));
  }

  // -- stage 9 (int64): dGR, M2 + M1 terms of GR dD
  k_dgr = ishift(fr("GR") + fr("dD") - ds - fr("dGR"), mag("GR") + mag("dD") + ceil_log2(m1 + m2), "dGR");
  need(mag("dGR") <= 52, "dGR wider than float64's exact integers");
  // ... and in float64 for an atom with (M1 + M2) max|GR| max|dD| + half < 2^53
  desc.dgr = dshift(fr("GR") + fr("dD") - ds - fr("dGR"), 0, "dGR");
  desc.dgr_range = range(fmt("dGR"));
  dgr_fast_max = std::ldexp(1.0, 53 + std::min(fr("GR") + fr("dD") - ds - fr("dGR"), 0)) - desc.dgr.half;
  // `cpu:int64` sends every atom down the int64 paths of stages 6 and 9, which the bundled models' atoms
  // never need: a cross-check of the float64 ones (tests/host/test_native_cpu.py), same words, slower.
  if (int64_stages) d_fast_max = dgr_fast_max = 0;
  // -- stage 10 (float64 sums, then int64)
  back.dr = dshift(fr("G") + fr("dGR") + ns - fr("dR"), mag("G") + mag("dGR") + ceil_log2(m1), "dR = G dGR^T");
  back.dr_range = range(fmt("dR"));
  back.dgj = dshift(fr("R") + fr("dGR") + ns - fr("dGj"), mag("R") + mag("dGR") + 2, "dGj = R dGR");
  back.dgj_range = range(fmt("dGj"));
  const int back_dsg_k = fr("dGj") + fr("dG") - fr("dS");
  back.dsg = dshift(back_dsg_k, mag("dGj") + mag("dG") + ceil_log2(m1), "dS from dGj G'");
  // ... then per record, float64: dS = sat(rq dR0 + dS_g), dH = sat(rq dR.d) (3 terms),
  // dU = sat(rq dS s' + rq dH h'), dE/dr = sat(rq dR h + rq dU d)
  // a sum of two values rounded by shifts ka, kb from magnitudes 2^ma, 2^mb: below 2^(max(ma - ka, mb - kb) + 2)
  auto sum_mag = [](int ma, int ka, int mb, int kb) { return std::max(std::max(ma - ka, 0), std::max(mb - kb, 0)) + 2; };
  rc.ds_r = dshift(fr("dR") - fr("dS"), mag("dR"), "dS from dR");
  dshift(0, sum_mag(mag("dR"), fr("dR") - fr("dS"), mag("dGj") + mag("dG") + ceil_log2(m1), back_dsg_k), "dS");
  rc.dh = dshift(fr("dR") + fr("coord") - fr("dH"), mag("dR") + mag("coord") + 2, "dH");
  rc.du_s = dshift(fr("dS") + fr("ds") - fr("dU"), mag("dS") + mag("ds"), "dU from dS");
  rc.du_h = dshift(fr("dH") + fr("dh") - fr("dU"), mag("dH") + mag("dh"), "dU from dH");
  dshift(0, sum_mag(mag("dS") + mag("ds"), fr("dS") + fr("ds") - fr("dU"), mag("dH") + mag("dh"),
                    fr("dH") + fr("dh") - fr("dU")), "dU");
  rc.f_r = dshift(fr("dR") + fr("h") - fr("F"), mag("dR") + mag("h"), "force from dR h");
  rc.f_u = dshift(fr("dU") + fr("coord") - 1 - fr("F"), mag("dU") + mag("coord"), "force from dU d");
  dshift(0, sum_mag(mag("dR") + mag("h"), fr("dR") + fr("h") - fr("F"), mag("dU") + mag("coord"),
                    fr("dU") + fr("coord") - 1 - fr("F")), "force");
  rc.dS = range(fmt("dS")), rc.dH = range(fmt("dH")), rc.dU = range(fmt("dU")), rc.F = range(fmt("F"));
  for (int t = 0; t < ntypes; t++) {
    rec.push_back(rc);
    rec.back().coef = sh_coef.data() + size_t(env_norm ? t : 0) * rows * 8;
  }
}

// ---- threads -------------------------------------------------------------------------------------------

/* A fixed set of threads that run jobs 0..n-1 of one call; the calling thread takes part as worker 0. */
class Pool {
 public:
  explicit Pool(int threads)
  {
    for (int k = 1; k < threads; k++) workers_.emplace_back([this, k]() { loop(k); });
  }
  ~Pool()
  {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    start_.notify_all();
    for (auto &t : workers_) t.join();
  }
  int size() const { return int(workers_.size()) + 1; }

  void run(size_t jobs, const std::function<void(size_t, int)> &fn)
  {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      jobs_ = jobs;
      next_ = 0;
      busy_ = int(workers_.size());
      error_ = nullptr;
      generation_++;
    }
    start_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this]() { return busy_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void loop(int id)
  {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        start_.wait(lock, [&]() { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work(id);
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
  void work(int id)
  {
    for (;;) {
      const size_t job = next_.fetch_add(1);
      if (job >= jobs_) return;
      try {
        (*fn_)(job, id);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        next_ = jobs_;  // the rest is not needed
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(size_t, int)> *fn_ = nullptr;
  size_t jobs_ = 0;
  std::atomic<size_t> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// ---- one chunk ---------------------------------------------------------------------------------------

/* A chunk's atoms as decoded from its words. */
struct Atoms {
  std::vector<uint64_t> header;  // input header word of each atom
  std::vector<size_t> start;     // records of atom a: rec[start[a] .. start[a + 1])
  std::vector<uint64_t> rec;     // input record words, in stream order
  std::vector<uint8_t> state;    // LIVE, DROPPED (bad type, a type over its sel), OVER (count > sum(sel))
  // results
  std::vector<int64_t> energy;
  std::vector<uint32_t> flags;
  std::vector<uint64_t> out;     // output record word of each record
};
enum : uint8_t { LIVE = 0, DROPPED = 1, OVER = 2 };

/* One thread's buffers, grown to the largest batch seen. */
struct Workspace {
  // per record of the batch (each atom's records from rfirst, padded to RECORD_PAD): RecordRows
  std::vector<int32_t> type;
  std::vector<double> dx, dy, dz, s, ds, h, dh, R, dR, dSg;  // R: 4 per record; dR: 4 rows of nrec
  std::vector<double> G, dG;             // M1 per record
  std::vector<const double *> cf;        // the embed kernel's scratch: per record
  std::vector<double> xi;
  std::vector<uint8_t> below;
  // per atom of the batch
  std::vector<double> GR, dGR;           // 4 * M1 per atom
  std::vector<double> pad0;              // pad_slots: the atom's empty slots' products (M1)
  std::vector<int> counts;               // ... from its records per neighbour type
  std::vector<int64_t> GRi;
  std::vector<double> gmax, dDT, ext;    // stages 6 and 9 in float64: per atom max|GR|; scratch
  std::vector<uint8_t> sat, small;
  std::vector<size_t> rfirst;            // the atom's first record in the batch's arrays
  // the batch's fitting net matrices (rows padded to GEMM_ROWS)
  std::vector<double> x0, acc, e, g, delta;
  std::vector<std::vector<double>> x, dphi;
  std::vector<uint8_t> rowsat;
};

template <typename T>
void fit_size(std::vector<T> &v, size_t n)
{
  if (v.size() < n) v.resize(n);
}

class CpuDevice : public Device {
 public:
  CpuDevice(const HostModel &hm, const DeviceConfig &config, bool portable, bool int64_stages)
      : m_(hm, int64_stages), lanes_(config.lanes), pool_(config.threads), ws_(size_t(config.threads))
  {
#ifdef DPFPGA_CPU_X86
    if (!portable && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      k_ = &cpu_avx2::KERNELS;
    else
#endif
      k_ = &cpu_generic::KERNELS;
    (void)portable;
  }
  std::string name() const override { return "cpu"; }
  int lanes() const override { return lanes_; }
  std::string describe() const override
  {
    return std::string("cpu (lanes ") + std::to_string(lanes_) + ", " + std::to_string(pool_.size()) +
           (pool_.size() == 1 ? " thread, " : " threads, ") + k_->name + " kernels)";
  }

  void submit(std::vector<uint64_t> words, size_t n_atoms) override
  {
    if (words.size() % size_t(lanes_) != 0)
      throw Error(ErrorKind::Device, "cpu: a chunk of " + std::to_string(words.size()) + " words is not whole beats");
    queue_.emplace_back(std::move(words), n_atoms);
  }

  std::vector<uint64_t> collect(double) override
  {
    if (queue_.empty()) throw Error(ErrorKind::Device, "cpu: collect() without a chunk in flight");
    auto [words, n_atoms] = std::move(queue_.front());
    queue_.pop_front();
    decode(words, n_atoms);
    // Batches of one centre type each: a batch's fitting GEMMs then have up to BATCH_ATOMS rows, not
    // two parts of it, each padded to GEMM_ROWS.
    order_.clear();
    std::vector<std::pair<size_t, size_t>> batches;  // [first, last) in order_
    for (int t = 0; t < m_.ntypes; t++) {
      const size_t first = order_.size();
      for (size_t i = 0; i < a_.header.size(); i++)
        if (a_.state[i] == LIVE && int(w::input_header::CTYPE.get(a_.header[i])) == t) order_.push_back(i);
      for (size_t b = first; b < order_.size(); b += BATCH_ATOMS)
        batches.emplace_back(b, std::min(order_.size(), b + BATCH_ATOMS));
    }
    pool_.run(batches.size(), [&](size_t b, int id) {
      batch(&order_[batches[b].first], batches[b].second - batches[b].first, ws_[size_t(id)]);
    });
    return encode();
  }

 private:
  CpuModel m_;
  int lanes_;
  const Kernels *k_ = nullptr;
  Pool pool_;
  std::vector<Workspace> ws_;
  std::deque<std::pair<std::vector<uint64_t>, size_t>> queue_;
  Atoms a_;
  std::vector<size_t> order_;  // the live atoms grouped by centre type: the batches' atoms

  /* The words -> atoms, framing checked as contract.wire.decode_atoms checks it (and worded so): a header
   * alone in slot 0 of its beat, then its records in the following beats (PAD words ignored). */
  void decode(const std::vector<uint64_t> &words, size_t n_atoms)
  {
    const size_t L = size_t(lanes_);
    a_.header.clear();
    a_.rec.clear();
    a_.start.assign(1, 0);
    if (!words.empty() && w::kind(words[0]) != w::HEADER)
      throw Error(ErrorKind::Device, "cpu: input stream does not start with a header");
    for (size_t b = 0; b < words.size(); b += L) {
      if (w::kind(words[b]) == w::HEADER) {
        if (!a_.header.empty()) a_.start.push_back(a_.rec.size());
        a_.header.push_back(words[b]);
        for (size_t s = 1; s < L; s++)
          if (w::kind(words[b + s]) != w::PAD)
            throw Error(ErrorKind::Device, "cpu: header beat " + std::to_string(b / L) + " has non-pad words");
      } else {
        for (size_t s = 0; s < L; s++)
          if (w::kind(words[b + s]) == w::RECORD) a_.rec.push_back(words[b + s]);
      }
    }
    if (!a_.header.empty()) a_.start.push_back(a_.rec.size());
    const size_t n = a_.header.size();
    for (size_t i = 0; i < n; i++) {
      const uint64_t count = w::input_header::COUNT.get(a_.header[i]), got = a_.start[i + 1] - a_.start[i];
      if (count != got)
        throw Error(ErrorKind::Device, "cpu: atom " + std::to_string(i) + " (tag " +
                                           std::to_string(w::input_header::TAG.get(a_.header[i])) +
                                           "): header announces " + std::to_string(count) + " records, stream has " +
                                           std::to_string(got));
    }
    if (n != n_atoms)
      throw Error(ErrorKind::Device, "cpu: chunk announces " + std::to_string(n_atoms) + " atoms, stream has " +
                                         std::to_string(n));
    // model/reference.py's stream checks: count > sum(sel) (dropped before the pipeline), a type outside
    // the type map, a type over its sel
    a_.state.assign(n, LIVE);
    a_.flags.assign(n, 0);
    a_.energy.assign(n, 0);
    a_.out.assign(a_.rec.size(), w::output_record::KIND_BITS);
    std::vector<int> counts(size_t(m_.ntypes));
    for (size_t i = 0; i < n; i++) {
      const size_t r0 = a_.start[i], r1 = a_.start[i + 1];
      if (r1 - r0 > size_t(m_.sum_sel)) {
        a_.state[i] = OVER;
        a_.flags[i] = w::flags::NEIGHBOR_OVERFLOW;
        continue;
      }
      bool bad = int(w::input_header::CTYPE.get(a_.header[i])) >= m_.ntypes;
      std::fill(counts.begin(), counts.end(), 0);
      for (size_t r = r0; r < r1; r++) {
        const int t = int(w::input_record::TYPE.get(a_.rec[r]));
        if (t >= m_.ntypes) bad = true;
        else counts[size_t(t)]++;
      }
      bool over = false;
      for (int t = 0; t < m_.ntypes; t++) over |= counts[size_t(t)] > m_.sel[size_t(t)];
      if (bad || over) {
        a_.state[i] = DROPPED;
        a_.flags[i] = (over ? w::flags::NEIGHBOR_OVERFLOW : 0) | (bad ? w::flags::BAD_TYPE : 0);
      }
    }
  }

  /* The output words, framed as contract.wire.encode_results frames them. */
  std::vector<uint64_t> encode() const
  {
    const size_t L = size_t(lanes_), n = a_.header.size();
    size_t beats = 0;
    for (size_t i = 0; i < n; i++) beats += 1 + (a_.state[i] == OVER ? 0 : (a_.start[i + 1] - a_.start[i] + L - 1) / L);
    std::vector<uint64_t> out(beats * L, 0);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
      const size_t nrec = a_.state[i] == OVER ? 0 : a_.start[i + 1] - a_.start[i];
      namespace oh = w::output_header;
      out[at] = oh::KIND_BITS | oh::TAG.put(w::input_header::TAG.get(a_.header[i])) | oh::N.put(nrec) |
                oh::FLAGS.put(a_.flags[i]) | oh::ENERGY.put(uint64_t(a_.energy[i]));
      at += L;
      std::copy(a_.out.begin() + long(a_.start[i]), a_.out.begin() + long(a_.start[i] + nrec), out.begin() + long(at));
      at += (nrec + L - 1) / L * L;
    }
    return out;
  }

  /* The pipeline on the chunk's live atoms atoms[0 .. na-1], all of one centre type. */
  void batch(const size_t *atoms, size_t na, Workspace &ws)
  {
    const CpuModel &m = m_;
    const int m1 = m.m1;
    const std::vector<size_t> live(atoms, atoms + na);
    const int ctype = int(w::input_header::CTYPE.get(a_.header[live[0]]));
    const RecConsts &rc = m.rec[size_t(ctype)];
    size_t nrec = 0;
    fit_size(ws.rfirst, na + 1);
    for (size_t q = 0; q < na; q++) {
      ws.rfirst[q] = nrec;
      nrec += (a_.start[live[q] + 1] - a_.start[live[q]] + RECORD_PAD - 1) / RECORD_PAD * RECORD_PAD;
    }
    ws.rfirst[na] = nrec;
    for (auto *v : {&ws.dx, &ws.dy, &ws.dz, &ws.s, &ws.ds, &ws.h, &ws.dh, &ws.dSg}) fit_size(*v, nrec);
    fit_size(ws.type, nrec);
    for (auto *v : {&ws.R, &ws.dR}) fit_size(*v, 4 * nrec);
    fit_size(ws.cf, nrec);
    fit_size(ws.xi, nrec);
    fit_size(ws.below, nrec);
    for (auto *v : {&ws.G, &ws.dG}) fit_size(*v, size_t(m1) * nrec);
    for (auto *v : {&ws.GR, &ws.dGR}) fit_size(*v, 4 * size_t(m1) * na);
    fit_size(ws.GRi, 4 * size_t(m1));
    fit_size(ws.dDT, size_t(m1) * size_t(m.m2));
    fit_size(ws.ext, 4 * size_t(m1));
    ws.sat.assign(na, 0);
    ws.small.assign(na, 0);
    auto rows_of = [&](size_t q) {
      const size_t j = ws.rfirst[q];
      return RecordRows{&ws.type[j], &ws.dx[j], &ws.dy[j], &ws.dz[j], &ws.s[j], &ws.ds[j], &ws.h[j], &ws.dh[j],
                        &ws.R[4 * j], &ws.dR[j], nrec, &ws.dSg[j]};
    };

    // -- stages 1-5: per record r^2, s, h, R; per atom G, GR
    fit_size(ws.pad0, size_t(m1));
    fit_size(ws.counts, size_t(m.ntypes));
    for (size_t q = 0; q < na; q++) {
      const size_t i = live[q], j0 = ws.rfirst[q], nr = a_.start[i + 1] - a_.start[i];
      bool small = false, sat = false;
      if (nr) sat = k_->records(rc, int(nr), &a_.rec[a_.start[i]], rows_of(q), small);
      const double *pad0 = nullptr;
      if (!m.pad.empty()) {  // pad_slots: (sel[t] - n_t) empty slots of each type t (n_t <= sel[t]: LIVE)
        std::fill(ws.counts.begin(), ws.counts.end(), 0);
        for (size_t j = 0; j < nr; j++) ws.counts[size_t(ws.type[j0 + j])]++;
        std::fill(ws.pad0.begin(), ws.pad0.begin() + m1, 0.0);
        for (int t = 0; t < m.ntypes; t++) {
          const double n_empty = double(m.sel[size_t(t)] - ws.counts[size_t(t)]);
          const double *prod = &m.pad[(size_t(ctype) * size_t(m.ntypes) + size_t(t)) * size_t(m1)];
          for (int c = 0; c < m1; c++) ws.pad0[size_t(c)] += n_empty * prod[c];  // exact: see CpuModel (pad)
        }
        pad0 = ws.pad0.data();
      }
      // no records: GR = 0 (or the empty slots' products)
      sat |= k_->embed(m.embed, int(nr), &ws.type[j0], &ws.s[j0], &ws.R[4 * j0], pad0, &ws.G[size_t(m1) * j0],
                       &ws.dG[size_t(m1) * j0], &ws.GR[4 * size_t(m1) * q], ws.cf.data(), ws.xi.data(),
                       ws.below.data());
      ws.sat[q] = sat;
      ws.small[q] = small;
    }

    // -- stages 6-8: D, the fitting net forward and backward over the batch's atoms (one centre type)
    fitting(ctype, ws, live);

    // -- stages 9-10: dGR per atom (fitting()), then per record dR, dGj, dS, dH, dU, dE/dr
    for (size_t q = 0; q < na; q++) {
      const size_t i = live[q], j0 = ws.rfirst[q], nr = a_.start[i + 1] - a_.start[i];
      bool sat = ws.sat[q];
      if (nr) {
        sat |= k_->backward(m.back, int(nr), &ws.R[4 * j0], &ws.G[size_t(m1) * j0], &ws.dG[size_t(m1) * j0],
                            &ws.dGR[4 * size_t(m1) * q], &ws.dR[j0], nrec, &ws.dSg[j0]);
        sat |= k_->tail(rc, int(nr), rows_of(q), &a_.out[a_.start[i]]);
      }
      a_.flags[i] = (sat ? w::flags::SATURATED : 0) | (ws.small[q] ? w::flags::R_BELOW_MIN : 0);
    }
  }

  /* D for the batch's atoms live[0 ..] (all of centre type t; GEMM row r is atom live[r]), their fitting
   * net forward and backward, energy and dGR. */
  void fitting(int t, Workspace &ws, const std::vector<size_t> &live)
  {
    const CpuModel &m = m_;
    const auto &layers = m.fit[size_t(t)];
    const int m1 = m.m1, m2 = m.m2, nm = int(live.size());
    const int rows = (nm + GEMM_ROWS - 1) / GEMM_ROWS * GEMM_ROWS;
    const int p0 = layers[0].p_in;
    const PipelineFormat &fD = m.fmt("D");
    fit_size(ws.x0, size_t(rows) * size_t(p0));
    std::fill(ws.x0.begin(), ws.x0.begin() + long(rows) * p0, 0.0);
    ws.rowsat.assign(size_t(rows), 0);
    // stage 6: D[c * M2 + b] = rq(sum_k GR[k][c] GR[k][b]): float64 where this atom's sums stay below
    // 2^53 (4 max|GR|^2 + half, exact as computed: GR < 2^26; rounding it can only refuse more atoms),
    // else int64 (a saturated GR's squares pass 2^53)
    fit_size(ws.gmax, size_t(nm));
    for (int r = 0; r < nm; r++) {
      const size_t q = size_t(r);
      const double *GR = &ws.GR[4 * size_t(m1) * q];
      const double g = ws.gmax[size_t(r)] = k_->maxabs(4 * m1, GR);
      if (4 * g * g < m.d_fast_max) {
        ws.rowsat[size_t(r)] = k_->descriptor(m.desc, GR, &ws.x0[size_t(r) * size_t(p0)]);
        continue;
      }
      int64_t *gi = ws.GRi.data();
      for (int v = 0; v < 4 * m1; v++) gi[v] = int64_t(GR[v]);
      bool sat = false;
      double *x = &ws.x0[size_t(r) * size_t(p0)];
      for (int c = 0; c < m1; c++)
        for (int b = 0; b < m2; b++) {
          const int e = m.desc.band ? (c + b) % m1 : b;  // desc_band: T[c][(c + b) mod M1]
          int64_t acc = 0;
          for (int k = 0; k < 4; k++) acc += gi[k * m1 + c] * gi[k * m1 + e];
          x[c * m2 + b] = double(sat64(sr64(acc, m.k_d), fD, sat));
        }
      ws.rowsat[size_t(r)] = sat;
    }
    // stages 7-8
    const size_t nl = layers.size();
    if (ws.x.size() < nl) ws.x.resize(nl), ws.dphi.resize(nl);
    const double *xin = ws.x0.data();
    for (size_t k = 0; k < nl; k++) {
      const LayerConsts &L = layers[k];
      fit_size(ws.acc, size_t(rows) * size_t(L.p_out));
      fit_size(ws.x[k], size_t(rows) * size_t(L.p_out));
      fit_size(ws.dphi[k], size_t(rows) * size_t(L.p_out));
      k_->gemm(rows, L.n_in, L.p_out / 8, xin, L.p_in, L.w_packed.data(), ws.acc.data(), L.p_out);
      k_->activate(L, rows, ws.acc.data(), xin, ws.x[k].data(), ws.dphi[k].data(), ws.rowsat.data());
      xin = ws.x[k].data();
    }
    const OutConsts &o = m.out[size_t(t)];
    fit_size(ws.e, size_t(rows));
    k_->energy(o, rows, xin, ws.e.data(), ws.rowsat.data());
    // backward: g = rq(out_w) to GA; per layer delta = rq(dphi g), back = delta W^T
    const double *g = nullptr;  // null: the row vector g0 for every row
    for (size_t kk = nl; kk-- > 0;) {
      const LayerConsts &L = layers[kk];
      fit_size(ws.delta, size_t(rows) * size_t(L.p_out));
      k_->combine(rows, L.p_out, ws.dphi[kk].data(), g, m.g0[size_t(t)].data(), false, L.delta,
                  range_of("DELTA"), ws.delta.data(), ws.rowsat.data());
      fit_size(ws.acc, size_t(rows) * size_t(L.p_in));
      k_->gemm(rows, L.n_out, L.p_in / 8, ws.delta.data(), L.p_out, L.wt_packed.data(), ws.acc.data(), L.p_in);
      fit_size(ws.g, size_t(rows) * size_t(L.p_in));
      if (kk == 0) {
        k_->requant(rows, L.p_in, ws.acc.data(), L.back, L.back_range, ws.acc.data(), ws.rowsat.data());  // dD
      } else {
        k_->requant(rows, L.p_in, ws.acc.data(), L.back, L.back_range, ws.acc.data(), ws.rowsat.data());
        if (L.resnet) {
          // g + back, both GA: no shift, saturate (a resnet layer has n_in == n_out: g is p_in wide); g
          // null is the first step's row vector g0 (in place: elementwise)
          k_->combine(rows, L.p_in, ws.acc.data(), g, m.g0[size_t(t)].data(), true, DShift{}, range_of("GA"),
                      ws.g.data(), ws.rowsat.data());
        } else {
          std::copy(ws.acc.begin(), ws.acc.begin() + long(rows) * L.p_in, ws.g.begin());
        }
        g = ws.g.data();
      }
    }
    // dD is in ws.acc (rows x p0); energy, flags, and stage 9 per atom
    const PipelineFormat &fdGR = m.fmt("dGR");
    for (int r = 0; r < nm; r++) {
      const size_t q = size_t(r), i = live[q];
      a_.energy[i] = int64_t(ws.e[size_t(r)]);
      bool sat = ws.rowsat[size_t(r)] || m.g0_sat[size_t(t)];
      const double *dD = &ws.acc[size_t(r) * size_t(p0)];  // dDm[c][b] = dD[c * M2 + b]
      const double *GR = &ws.GR[4 * size_t(m1) * q];
      double *dGR = &ws.dGR[4 * size_t(m1) * q];
      // float64 where (M1 + M2) max|GR| max|dD| + half < 2^53 (as for D; the product of two values below
      // 2^26 is exact, the factor's rounding can only refuse more atoms), else int64
      if (double(m1 + m2) * (ws.gmax[size_t(r)] * k_->maxabs(m1 * m2, dD)) < m.dgr_fast_max) {
        sat |= k_->dgr(m.desc, GR, dD, ws.dDT.data(), ws.ext.data(), dGR);
        ws.sat[q] |= sat;
        continue;
      }
      int64_t *gi = ws.GRi.data();
      for (int v = 0; v < 4 * m1; v++) gi[v] = int64_t(GR[v]);
      for (int k = 0; k < 4; k++)
        for (int c = 0; c < m1; c++) {
          int64_t acc = 0;
          if (m.desc.band) {  // as the dgr kernel's band branch
            for (int b = 0; b < m2; b++) {
              const int a = (c - b + m1) % m1;
              acc += gi[k * m1 + (c + b) % m1] * int64_t(dD[c * m2 + b]) + gi[k * m1 + a] * int64_t(dD[a * m2 + b]);
            }
          } else {
            for (int b = 0; b < m2; b++) acc += gi[k * m1 + b] * int64_t(dD[c * m2 + b]);
            if (c < m2)
              for (int a = 0; a < m1; a++) acc += gi[k * m1 + a] * int64_t(dD[a * m2 + c]);
          }
          dGR[k * m1 + c] = double(sat64(sr64(acc, m.k_dgr), fdGR, sat));
        }
      ws.sat[q] |= sat;
    }
  }

  DRange range_of(const char *name) const
  {
    const PipelineFormat &f = m_.fmt(name);
    return {double(f.lo()), double(f.hi())};
  }
};

int default_threads()
{
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, int(std::thread::hardware_concurrency()));
}

}  // namespace

std::unique_ptr<Device> open_cpu(const std::string &arg, const HostModel &model, const DeviceConfig &config)
{
  // cpu[:OPTION[,OPTION]]: generic (the portable kernels), int64 (stages 6 and 9 in int64 for every atom)
  bool portable = false, int64_stages = false;
  for (size_t at = 0; !arg.empty() && at <= arg.size();) {
    const size_t comma = std::min(arg.find(',', at), arg.size());
    const std::string opt = arg.substr(at, comma - at);
    if (opt == "generic") portable = true;
    else if (opt == "int64") int64_stages = true;
    else
      throw Error(ErrorKind::Device, "cpu: unknown option '" + opt +
                                         "' (cpu[:generic][,int64]: the portable kernels; stages 6 and 9 in int64)");
    at = comma + 1;
  }
  if (config.threads < 0) throw Error(ErrorKind::Device, "cpu: threads must be >= 1, got " + std::to_string(config.threads));
  DeviceConfig c = config;
  if (c.threads == 0) c.threads = default_threads();
  return std::make_unique<CpuDevice>(model, c, portable, int64_stages);
}

}  // namespace dpfpga
