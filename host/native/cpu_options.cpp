/* The cpu device's pipeline for models with options: see cpu_options.h.  Each step names the stage of
 * model/reference.py it computes; the arithmetic rules are contract/fixedpoint.py's (a right shift by k
 * rounds half up, saturation clips and flags). */
#include "cpu_options.h"

#include "dpfpga/core.h"
#include "dpfpga/wire.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

namespace dpfpga {

namespace {

namespace w = wire;
typedef __int128 i128;

/* contract.fixedpoint.shift_round: (v + 2^(k-1)) >> k, arithmetic; a left shift for k < 0. */
inline i128 sr(i128 v, int k)
{
  if (k > 0) return (v + (i128(1) << (k - 1))) >> k;
  if (k < 0) return v * (i128(1) << -k);
  return v;
}

/* contract.fixedpoint.requant, with the saturation noted in `hit`. */
struct Sat {
  bool hit = false;
  int64_t operator()(i128 v, int from_frac, const PipelineFormat &f)
  {
    v = sr(v, from_frac - f.frac);
    if (v < f.lo()) {
      hit = true;
      return f.lo();
    }
    if (v > f.hi()) {
      hit = true;
      return f.hi();
    }
    return int64_t(v);
  }
};

/* model.reference.table_lookup for one input: every channel's value, slope and saturation. */
struct Lookup {
  std::vector<int64_t> y, dy;
  std::vector<uint8_t> sat;
  bool below = false, past = false;
  bool any_sat() const { return std::find(sat.begin(), sat.end(), 1) != sat.end(); }
};

void lookup(const PipelineTable &t, int64_t x, Lookup &r)
{
  r.y.assign(size_t(t.nch), 0);
  r.dy.assign(size_t(t.nch), 0);
  r.sat.assign(size_t(t.nch), 0);
  r.below = x < t.x_min;
  x = std::max(x, t.x_min);
  const int index_shift = t.x_frac - t.seg_shift;
  const int64_t idx = (x >> index_shift) - t.first_seg;
  const int64_t xi = (x >> (index_shift - t.xi_bits)) & ((int64_t(1) << t.xi_bits) - 1);
  r.past = idx >= t.nseg;
  if (r.past) return;
  for (int ch = 0; ch < t.nch; ch++) {
    Sat sat;
    const int64_t *c = &t.values[(size_t(idx) * size_t(t.nch) + size_t(ch)) * 3];
    const i128 tt = sr(i128(c[2]) * xi, t.xi_bits);
    r.y[size_t(ch)] = sat(c[0] + sr((c[1] + tt) * xi, t.xi_bits), t.coef.frac, t.out);
    // below x_min the table is constant: no slope, and no saturation of a slope that is not used
    if (!r.below) r.dy[size_t(ch)] = sat(c[1] + 2 * tt, t.coef.frac - t.seg_shift, t.dout);
    r.sat[size_t(ch)] = sat.hit;
  }
}

/* model.reference.tanh4 with f fraction bits. */
void tanh4(int64_t z, int f, int64_t &y, int64_t &dphi)
{
  const int64_t two = int64_t(2) << f, az = z < 0 ? -z : z;
  const int64_t za = std::min(az, two);
  const i128 xx = sr(i128(za) * za, f);
  const int64_t ya = za + int64_t(sr(xx * (sr(xx, 4) - sr(za, 2)), f));
  y = z < 0 ? -ya : ya;
  dphi = az >= two ? 0 : (int64_t(1) << f) + int64_t(sr(xx * (sr(za, 2) - 3 * (int64_t(1) << (f - 2))), f));
}

}  // namespace

OptionsPipeline::OptionsPipeline(std::shared_ptr<const PipelineConstants> keep, const std::vector<int> &sel)
    : keep_(std::move(keep)), p_(*keep_), sel_(sel), ntypes_(int(sel.size())), m1_(p_.m1), m2_(p_.m2)
{
  const PipelineConstants &p = p_;
  auto need = [](bool ok, const std::string &why) {
    if (!ok) throw Error(ErrorKind::Model, "cpu device (model options): " + why);
  };
  auto table = [&](const std::string &name, int nch) {
    auto it = p.tables.find(name);
    need(it != p.tables.end() && it->second.given &&
             it->second.values.size() == size_t(it->second.nseg) * size_t(it->second.nch) * 3,
         "table " + name + " missing or incomplete");
    need(nch == 0 || it->second.nch == nch, "table " + name + " has " + std::to_string(it->second.nch) +
                                                " channels, expected " + std::to_string(nch));
    need(it->second.xi_bits >= 1 && it->second.x_frac - it->second.seg_shift >= it->second.xi_bits,
         "table " + name + ": xi_bits outside [1, x_frac - seg_shift]");
    return &it->second;
  };
  auto fmt = [&](const char *name) {
    auto it = p.formats.find(name);
    need(it != p.formats.end(), std::string("format ") + name + " missing");
    return it->second;
  };
  need(p.config_given && m1_ > 0 && m2_ > 0 && m2_ <= m1_, "pipeline_config missing or inconsistent");
  s_ = table("s", 0);
  h_ = table("h", s_->nch);
  need(s_->nch == 1 || s_->nch == ntypes_, "u-tables need one channel or one per centre type");
  for (int t = 0; t < ntypes_; t++) g_.push_back(table("g" + std::to_string(t), m1_));
  // an option this path does not know would be computed as if it were off: refuse it by name
  for (const std::string &o : p.options)
    need(o == "env_norm" || o == "pad_slots" || o == "fit_activation" || o == "desc_band" || o == "embed_table",
         "unknown model option '" + o + "'");
  band_ = std::find(p.options.begin(), p.options.end(), "desc_band") != p.options.end();
  const bool tanh = std::find(p.options.begin(), p.options.end(), "fit_activation") != p.options.end();
  if (tanh) act_ = table("act", 1);
  const bool pad = std::find(p.options.begin(), p.options.end(), "pad_slots") != p.options.end();
  if (pad) {  // the text's pad lines, [16][16][M1] as read, compacted to [ntypes][ntypes][M1]
    const size_t m = size_t(m1_);
    need(p.pad.size() >= ((size_t(ntypes_) - 1) * 16 + size_t(ntypes_)) * m, "pad_slots without its pipeline_pad lines");
    for (int ct = 0; ct < ntypes_; ct++)
      for (int t = 0; t < ntypes_; t++)
        pad_.insert(pad_.end(), p.pad.begin() + long((size_t(ct) * 16 + size_t(t)) * m),
                    p.pad.begin() + long((size_t(ct) * 16 + size_t(t) + 1) * m));
  }
  need(p.fit.size() == size_t(ntypes_) && p.out_w.size() == size_t(ntypes_), "fitting nets missing");
  for (int t = 0; t < ntypes_; t++) {
    int n_in = m1_ * m2_;
    for (const PipelineLayer &l : p.fit[size_t(t)]) {
      need(l.given && l.n_in == n_in && l.w.size() == size_t(l.n_in) * size_t(l.n_out) && l.b.size() == size_t(l.n_out),
           "fitting layer of centre type " + std::to_string(t) + " missing or not chained");
      n_in = l.n_out;
    }
    need(p.out_w[size_t(t)].size() == size_t(n_in), "output weights of centre type " + std::to_string(t));
  }
  f_coord = fmt("coord"), f_s = fmt("s"), f_h = fmt("h"), f_ds = fmt("ds"), f_dh = fmt("dh"), f_R = fmt("R");
  f_G = fmt("G"), f_dG = fmt("dG"), f_GR = fmt("GR"), f_D = fmt("D"), f_Z = fmt("Z"), f_A = fmt("A");
  f_E = fmt("E"), f_GA = fmt("GA"), f_DELTA = fmt("DELTA"), f_dD = fmt("dD"), f_dGR = fmt("dGR"), f_dR = fmt("dR");
  f_dGj = fmt("dGj"), f_dS = fmt("dS"), f_dH = fmt("dH"), f_dU = fmt("dU"), f_F = fmt("F");
  need(f_Z.frac >= 2, "Z format needs 2 fraction bits for tanh4");
}

void OptionsPipeline::atom(int ctype, const uint64_t *rec, size_t n, int64_t &energy, uint64_t *out,
                           uint32_t &flags) const
{
  const int m1 = m1_, m2 = m2_, ns = p_.norm_shift;
  const int ch = s_->nch > 1 ? ctype : 0;  // env_norm: the u-tables' channel of this centre type
  Sat sat;
  bool r_small = false;
  std::vector<int> counts(size_t(ntypes_), 0);
  // -- stages 1-4 per record: u, the s and h tables, R, G and G'
  std::vector<int64_t> d(3 * n), s(n), ds(n), h(n), dh(n), R(4 * n), G(size_t(m1) * n), dG(size_t(m1) * n);
  Lookup L;
  for (size_t j = 0; j < n; j++) {
    const int t = int(w::input_record::TYPE.get(rec[j]));
    counts[size_t(t)]++;
    int64_t *dj = &d[3 * j];
    dj[0] = w::input_record::DX.get_signed(rec[j]);
    dj[1] = w::input_record::DY.get_signed(rec[j]);
    dj[2] = w::input_record::DZ.get_signed(rec[j]);
    const int64_t u = dj[0] * dj[0] + dj[1] * dj[1] + dj[2] * dj[2];
    lookup(*s_, u, L);
    // only this centre type's channel is the atom's (its saturation included)
    s[j] = L.y[size_t(ch)], ds[j] = L.dy[size_t(ch)];
    sat.hit |= L.sat[size_t(ch)] != 0;
    r_small |= L.below;
    lookup(*h_, u, L);
    h[j] = L.y[size_t(ch)], dh[j] = L.dy[size_t(ch)];
    sat.hit |= L.sat[size_t(ch)] != 0;
    R[4 * j] = sat(s[j], f_s.frac, f_R);
    for (int a = 0; a < 3; a++) R[4 * j + 1 + size_t(a)] = sat(i128(h[j]) * dj[a], f_h.frac + f_coord.frac, f_R);
    lookup(*g_[size_t(t)], s[j], L);
    sat.hit |= L.any_sat() || L.past;
    std::copy(L.y.begin(), L.y.end(), &G[size_t(m1) * j]);
    std::copy(L.dy.begin(), L.dy.end(), &dG[size_t(m1) * j]);
  }
  // -- stage 5: GR = 2^-norm_shift (sum_j R_j^T G_j + the empty slots' products)
  std::vector<int64_t> GR(4 * size_t(m1));
  for (int k = 0; k < 4; k++)
    for (int c = 0; c < m1; c++) {
      i128 acc = 0;
      for (size_t j = 0; j < n; j++) acc += i128(R[4 * j + size_t(k)]) * G[size_t(m1) * j + size_t(c)];
      if (k == 0 && !pad_.empty())
        for (int t = 0; t < ntypes_; t++)
          acc += i128(sel_[size_t(t)] - counts[size_t(t)]) * pad_[(size_t(ctype) * size_t(ntypes_) + size_t(t)) * size_t(m1) + size_t(c)];
      GR[size_t(k * m1 + c)] = sat(acc, f_R.frac + f_G.frac + ns, f_GR);
    }
  // -- stage 6: D[a, b] = 2^desc_shift T[a, col(a, b)], T = GR^T GR, col = b or (desc_band) (a + b) mod M1
  const bool band = band_;
  auto col = [band, m1](int a, int b) { return band ? (a + b) % m1 : b; };
  std::vector<int64_t> x(size_t(m1 * m2));
  for (int a = 0; a < m1; a++)
    for (int b = 0; b < m2; b++) {
      i128 acc = 0;
      for (int k = 0; k < 4; k++) acc += i128(GR[size_t(k * m1 + a)]) * GR[size_t(k * m1 + col(a, b))];
      x[size_t(a * m2 + b)] = sat(acc, 2 * f_GR.frac - p_.desc_shift, f_D);
    }
  // -- stages 7-8: the fitting net of the centre type, forward then backward
  const int fz = f_Z.frac, fa = f_A.frac;
  const std::vector<PipelineLayer> &layers = p_.fit[size_t(ctype)];
  std::vector<std::vector<int64_t>> dphi(layers.size());
  int xfrac = f_D.frac;
  for (size_t k = 0; k < layers.size(); k++) {
    const PipelineLayer &l = layers[k];
    std::vector<int64_t> y(size_t(l.n_out));
    dphi[k].resize(size_t(l.n_out));
    for (int o = 0; o < l.n_out; o++) {
      i128 acc = 0;
      for (int i = 0; i < l.n_in; i++) acc += i128(x[size_t(i)]) * l.w[size_t(i) * size_t(l.n_out) + size_t(o)];
      // saturating z is no fault (the reference flags none): tanh4 is flat, tanh within 2 LSB of +-1
      const int64_t z = std::clamp<int64_t>(int64_t(sr(acc, xfrac + l.wfrac - fz)) + l.b[size_t(o)], f_Z.lo(), f_Z.hi());
      int64_t yz, dz;
      if (act_) {
        lookup(*act_, z < 0 ? -z : z, L);
        yz = z < 0 ? -L.y[0] : L.y[0];
        dz = L.dy[0];
      } else {
        tanh4(z, fz, yz, dz);
      }
      y[size_t(o)] = int64_t(sr(yz, fz - fa));
      dphi[k][size_t(o)] = dz;
    }
    if (l.resnet)
      for (int o = 0; o < l.n_out; o++) x[size_t(o)] = sat(i128(x[size_t(o)]) + y[size_t(o)], fa, f_A);
    else
      x = y;
    xfrac = fa;
  }
  const std::vector<int64_t> &ow = p_.out_w[size_t(ctype)];
  const int owf = p_.out_wfrac[size_t(ctype)];
  i128 acc_e = 0;
  for (size_t i = 0; i < ow.size(); i++) acc_e += i128(x[i]) * ow[i];
  energy = sat(acc_e, fa + owf, f_E);
  std::vector<int64_t> g(ow.size()), dD;
  for (size_t i = 0; i < ow.size(); i++) g[i] = sat(ow[i], owf, f_GA);
  for (size_t k = layers.size(); k-- > 0;) {
    const PipelineLayer &l = layers[k];
    std::vector<int64_t> delta(size_t(l.n_out)), back(size_t(l.n_in));
    for (int o = 0; o < l.n_out; o++) delta[size_t(o)] = sat(i128(dphi[k][size_t(o)]) * g[size_t(o)], fz + f_GA.frac, f_DELTA);
    for (int i = 0; i < l.n_in; i++) {
      i128 acc = 0;
      for (int o = 0; o < l.n_out; o++) acc += i128(l.w[size_t(i) * size_t(l.n_out) + size_t(o)]) * delta[size_t(o)];
      back[size_t(i)] = sat(acc, f_DELTA.frac + l.wfrac, k == 0 ? f_dD : f_GA);
    }
    if (k == 0)
      dD = back;
    else if (l.resnet)
      for (int i = 0; i < l.n_in; i++) g[size_t(i)] = sat(i128(g[size_t(i)]) + back[size_t(i)], f_GA.frac, f_GA);
    else
      g = back;
  }
  // -- stage 9: dE/dGR
  std::vector<int64_t> dGR(4 * size_t(m1));
  for (int k = 0; k < 4; k++)
    for (int c = 0; c < m1; c++) {
      i128 acc = 0;
      // T[a, e] = sum_k GR[k, a] GR[k, e]: GR[k, c] is the first factor of D[c, b] and the second of each
      // D[a, b] with col(a, b) = c
      for (int b = 0; b < m2; b++) acc += i128(GR[size_t(k * m1 + col(c, b))]) * dD[size_t(c * m2 + b)];
      if (band)
        for (int b = 0; b < m2; b++) {
          const int a = ((c - b) % m1 + m1) % m1;
          acc += i128(GR[size_t(k * m1 + a)]) * dD[size_t(a * m2 + b)];
        }
      else if (c < m2)
        for (int a = 0; a < m1; a++) acc += i128(GR[size_t(k * m1 + a)]) * dD[size_t(a * m2 + c)];
      dGR[size_t(k * m1 + c)] = sat(acc, f_GR.frac + f_dD.frac - p_.desc_shift, f_dGR);
    }
  // -- stage 10: per record, dE/dr_ij
  const int ff = f_F.frac;
  namespace orec = w::output_record;
  for (size_t j = 0; j < n; j++) {
    const int64_t *dj = &d[3 * j];
    int64_t dR[4];
    for (int k = 0; k < 4; k++) {
      i128 acc = 0;
      for (int c = 0; c < m1; c++) acc += i128(dGR[size_t(k * m1 + c)]) * G[size_t(m1) * j + size_t(c)];
      dR[k] = sat(acc, f_G.frac + f_dGR.frac + ns, f_dR);
    }
    i128 dsg = 0;
    for (int c = 0; c < m1; c++) {
      i128 acc = 0;
      for (int k = 0; k < 4; k++) acc += i128(dGR[size_t(k * m1 + c)]) * R[4 * j + size_t(k)];
      dsg += i128(sat(acc, f_R.frac + f_dGR.frac + ns, f_dGj)) * dG[size_t(m1) * j + size_t(c)];
    }
    const i128 dS_g = sr(dsg, f_dGj.frac + f_dG.frac - f_dS.frac);
    const int64_t dS = sat(sr(dR[0], f_dR.frac - f_dS.frac) + dS_g, f_dS.frac, f_dS);
    const int64_t dH = sat(i128(dR[1]) * dj[0] + i128(dR[2]) * dj[1] + i128(dR[3]) * dj[2], f_dR.frac + f_coord.frac, f_dH);
    const int64_t dU = sat(sr(i128(dS) * ds[j], f_dS.frac + f_ds.frac - f_dU.frac) +
                               sr(i128(dH) * dh[j], f_dH.frac + f_dh.frac - f_dU.frac),
                           f_dU.frac, f_dU);
    int64_t F[3];
    for (int a = 0; a < 3; a++)
      F[a] = sat(sr(i128(dR[1 + a]) * h[j], f_dR.frac + f_h.frac - ff) +
                     // d(r^2)/dx = 2 dx: the factor 2 is one less bit of shift
                     sr(i128(dU) * dj[a], f_dU.frac + f_coord.frac - 1 - ff),
                 ff, f_F);
    out[j] = orec::KIND_BITS | orec::DEDX.put(uint64_t(F[0])) | orec::DEDY.put(uint64_t(F[1])) |
             orec::DEDZ.put(uint64_t(F[2]));
  }
  flags = (sat.hit ? w::flags::SATURATED : 0) | (r_small ? w::flags::R_BELOW_MIN : 0);
}

}  // namespace dpfpga
