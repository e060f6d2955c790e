/* The native host core (core.h): records, checks, wire encoding, chunks in flight, exact fold.
 *
 * Read top-down: the model text, the messages (each the Python path's, word for word), a chunk's
 * records and their checks, encoding, folding, and the loop that keeps chunks in flight. */
#include "dpfpga/core.h"

#include "chunk.h"
#include "dpfpga/wire.h"
#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <limits>
#include <sstream>

namespace dpfpga {

namespace w = wire;

// ---- the model text (host/native.py host_model_text) ---------------------------------------------------

HostModel HostModel::parse(const std::string &text)
{
  HostModel m;
  std::istringstream in(text);
  std::string line, key;
  bool header = false, ended = false, have_rcut = false, have_bias = false;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    if (!(ls >> key)) continue;
    if (!header) {
      int version = 0;
      if (key != "dpfpga-host-model" || !(ls >> version) || version != 1)
        throw Error(ErrorKind::Model, "not a dpfpga host model text (first line: '" + line + "')");
      header = true;
      continue;
    }
    if (key == "end") {
      ended = true;
      break;
    }
    auto bad = [&]() { return Error(ErrorKind::Model, "host model text: bad line '" + line + "'"); };
    if (key == "hash") {
      if (!(ls >> m.hash)) throw bad();
    } else if (key == "ntypes") {
      if (!(ls >> m.ntypes)) throw bad();
    } else if (key == "type_map") {
      for (std::string t; ls >> t;) m.type_map.push_back(t);
    } else if (key == "sel") {
      for (int s; ls >> s;) m.sel.push_back(s);
    } else if (key == "energy_bias") {
      for (long long b; ls >> b;) m.energy_bias.push_back(b);
      have_bias = true;
    } else if (key == "coord_describe") {
      if (!(ls >> m.coord_describe)) throw bad();
    } else if (key.rfind("pipeline_", 0) == 0) {
      if (!m.pipeline) m.pipeline = std::make_shared<PipelineConstants>();
      parse_pipeline_line(*m.pipeline, key, ls, line);
    } else {
      // Numbers: floats through strtod, which reads Python's repr back exactly.
      std::string v;
      if (!(ls >> v)) throw bad();
      char *end = nullptr;
      if (key == "rcut" || key == "coord_max_value" || key == "r_min" || key == "training_min_distance") {
        double x = std::strtod(v.c_str(), &end);
        if (*end) throw bad();
        (key == "rcut" ? (have_rcut = true, m.rcut) : key == "coord_max_value" ? m.coord_max_value
                                                      : key == "r_min"          ? m.r_min
                                                                                : m.training_min_distance) = x;
      } else {
        long long x = std::strtoll(v.c_str(), &end, 10);
        if (*end) throw bad();
        if (key == "coord_frac") m.coord_frac = int(x);
        else if (key == "coord_lo") m.coord_lo = x;
        else if (key == "coord_hi") m.coord_hi = x;
        else if (key == "table_x_min") m.table_x_min = x;
        else if (key == "energy_frac") m.energy_frac = int(x);
        else if (key == "force_frac") m.force_frac = int(x);
        else throw Error(ErrorKind::Model, "host model text: unknown key '" + key + "'");
      }
    }
  }
  if (!header || !ended) throw Error(ErrorKind::Model, "host model text is incomplete (no `end` line)");
  if (m.ntypes < 1 || int(m.type_map.size()) != m.ntypes || int(m.sel.size()) != m.ntypes || !have_bias ||
      int(m.energy_bias.size()) != m.ntypes || !have_rcut || !(m.rcut > 0) || m.hash.empty())
    throw Error(ErrorKind::Model, "host model text: types, sel, energy_bias, rcut or hash missing or inconsistent");
  if (m.sum_sel() >= (1 << w::COUNT_BITS) || m.ntypes > (1 << w::TYPE_BITS))
    throw Error(ErrorKind::Model, "host model text: sel or ntypes beyond what the wire format carries");
  return m;
}

int HostModel::sum_sel() const
{
  int s = 0;
  for (int v : sel) s += v;
  return s;
}

std::string HostModel::type_map_text() const
{
  std::string s = "[";
  for (size_t k = 0; k < type_map.size(); k++) s += (k ? ", '" : "'") + type_map[k] + "'";
  return s + "]";
}

// ---- messages: the Python path's text ------------------------------------------------------------------

namespace {

/* printf into a std::string (Python's format specs g, .4f, ... are C's). */
template <typename... Args>
std::string fmt(const char *spec, Args... args)
{
  char buf[64];
  std::snprintf(buf, sizeof buf, spec, args...);
  return buf;
}

std::string describe_flags(uint32_t flags)
{
  std::string s;
  for (const auto &f : w::flags::TEXT)
    if (flags & f.mask) s += (s.empty() ? "" : ", ") + std::string(f.text);
  return s.empty() ? "none" : s;
}

double seconds()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int64_t name_of(const int64_t *ids, int64_t index) { return ids ? ids[index] : index; }

}  // namespace

// ---- one chunk ------------------------------------------------------------------------------------------

namespace {

/* GivenNeighbors (host/neighbors.py): runs of consecutive local atoms, r_ij = x_j - x_i, kept when
 * |r_ij|^2 < rcut^2 (the test the cell list makes too, on the same expression). */
class GivenSource : public Core::Source {
 public:
  GivenSource(const Domain &d, double rcut, size_t chunk_atoms) : d_(d), rc2_(rcut * rcut), chunk_(chunk_atoms)
  {
    start_.resize(d.nlocal + 1, 0);
    for (size_t i = 0; i < d.nlocal; i++) start_[i + 1] = start_[i] + size_t(d.numneigh[i]);
  }

  bool next(Core::Chunk &c) override
  {
    if (lo_ >= d_.nlocal) return false;
    c.clear();
    const size_t hi = std::min(d_.nlocal, lo_ + chunk_);
    c.reserve(start_[hi] - start_[lo_]);
    const double *x = d_.x;
    for (size_t i = lo_; i < hi; i++) {
      c.centres.push_back(int64_t(i));
      const double xi = x[3 * i], yi = x[3 * i + 1], zi = x[3 * i + 2];
      // Candidates (a skin's worth more than the pairs) kept without a branch per candidate, whose
      // outcome a CPU cannot predict: each is written, and the count advances when it is inside.
      const size_t n_cand = start_[i + 1] - start_[i];
      if (keep_.size() < n_cand) keep_.resize(n_cand), kv_.resize(3 * n_cand);
      const int64_t *cand = d_.neighbors + start_[i];
      size_t m = 0;
      for (size_t k = 0; k < n_cand; k++) {
        const int64_t j = cand[k];
        const double vx = x[3 * j] - xi, vy = x[3 * j + 1] - yi, vz = x[3 * j + 2] - zi;
        keep_[m] = j;
        kv_[3 * m] = vx, kv_[3 * m + 1] = vy, kv_[3 * m + 2] = vz;
        m += (vx * vx + vy * vy) + vz * vz < rc2_;
      }
      for (size_t k = 0; k < m; k++) {
        const int64_t j = keep_[k];
        if (size_t(j) == i) throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + " is listed as its own neighbour");
        c.add(d_.types[j], j, kv_[3 * k], kv_[3 * k + 1], kv_[3 * k + 2]);
      }
      c.end_centre();
    }
    lo_ = hi;
    return true;
  }

 private:
  const Domain &d_;
  double rc2_;
  size_t chunk_, lo_ = 0;
  std::vector<size_t> start_;
  std::vector<int64_t> keep_;  // one centre's candidates inside rcut (indices, then r_ij)
  std::vector<double> kv_;
};

}  // namespace

// ---- the checks, in the Python path's order (host/evaluate.py Evaluator._evaluate) -----------------------

void Core::check_and_quantize(Chunk &c, const int64_t *ids, Result &r)
{
  const size_t k = c.size(), nt = size_t(m_.ntypes);
  // 1. sel per type (model.neighbors.check_sel): the first centre, its lowest type, and how many centres.
  {
    std::vector<int> count(nt);
    size_t n_bad = 0, bad_c = 0, bad_t = 0;
    int bad_n = 0;
    for (size_t a = 0; a < k; a++) {
      std::fill(count.begin(), count.end(), 0);
      for (size_t e = c.start[a]; e < c.start[a + 1]; e++) count[size_t(c.rtype[e])]++;
      for (size_t t = 0; t < nt; t++)
        if (count[t] > m_.sel[t]) {
          if (n_bad == 0) bad_c = a, bad_t = t, bad_n = count[t];
          n_bad++;
          break;
        }
    }
    if (n_bad)
      throw Error(ErrorKind::NeighborOverflow,
                  "atom " + std::to_string(name_of(ids, c.centres[bad_c])) + " has " + std::to_string(bad_n) +
                      " neighbours of type " + m_.type_map[bad_t] + " inside rcut, more than sel[" +
                      std::to_string(bad_t) + "]=" + std::to_string(m_.sel[bad_t]) + " (" + std::to_string(n_bad) +
                      " atom(s) affected); the hardware holds at most sel neighbours per type and never "
                      "truncates: increase sel and re-export the model");
  }
  // 2. quantize: q = floor(v * 2^frac + 0.5), every component inside the coord format
  // (model.assembly.quantize_displacements), and 3. r_min: the hardware's own integer test,
  // u = dx^2 + dy^2 + dz^2 below the s table's first input (model.assembly.below_rmin), in one pass;
  // a range error is reported before a close contact, as the Python path checks them in that order.
  const double scale = std::ldexp(1.0, m_.coord_frac);
  const double lo = double(m_.coord_lo), hi = double(m_.coord_hi) + 1.0;
  const int64_t x_min = m_.table_x_min;
  const size_t n = c.records();
  c.d.resize(3 * n);
  const double *vec = c.vec.data();
  int32_t *dq = c.d.data();
  size_t n_bad = 0, first = SIZE_MAX, n_close = 0, closest = SIZE_MAX;
  double r_closest = std::numeric_limits<double>::infinity();
  for (size_t e = 0; e < n; e++) {
    bool bad = false;
    for (int a = 0; a < 3; a++) {
      const double y = vec[3 * e + a] * scale + 0.5;
      // floor(y) inside the format's range (std::floor is a libm call without SSE4.1): y is in
      // [lo, hi + 1) exactly when floor(y) is in [lo, hi], and there truncation toward zero, one
      // less for a negative non-integer, is floor.  NaN fails the range test.
      if (!(y >= lo && y < hi)) {
        if (first == SIZE_MAX) first = 3 * e + size_t(a);
        bad = true;
        dq[3 * e + a] = 0;
        continue;
      }
      int32_t t = int32_t(y);
      dq[3 * e + a] = double(t) > y ? t - 1 : t;
    }
    n_bad += bad;
    const int64_t dx = dq[3 * e], dy = dq[3 * e + 1], dz = dq[3 * e + 2];
    if (bad || dx * dx + dy * dy + dz * dz >= x_min) continue;
    n_close++;
    const double vx = vec[3 * e], vy = vec[3 * e + 1], vz = vec[3 * e + 2];
    const double rr = std::sqrt((vx * vx + vy * vy) + vz * vz);
    if (rr < r_closest) r_closest = rr, closest = e;
  }
  if (n_bad) {
    const size_t e = first / 3;
    const size_t a = size_t(std::upper_bound(c.start.begin(), c.start.end(), e) - c.start.begin()) - 1;
    throw Error(ErrorKind::InputRange,
                "atom " + std::to_string(name_of(ids, c.centres[a])) + ": displacement component " +
                    fmt("%.6g", c.vec[first]) + " Å does not fit the input format " + m_.coord_describe +
                    " (|dx| <= " + fmt("%.4g", m_.coord_max_value) + " Å); " + std::to_string(n_bad) +
                    " record(s) affected");
  }
  if (n_close && !opt_.allow_below_rmin) {
    size_t atoms = 0;
    for (size_t a = 0; a < k; a++)
      for (size_t e = c.start[a]; e < c.start[a + 1]; e++) {
        const int64_t dx = c.d[3 * e], dy = c.d[3 * e + 1], dz = c.d[3 * e + 2];
        if (dx * dx + dy * dy + dz * dz < m_.table_x_min) {
          atoms++;
          break;
        }
      }
    const size_t a = size_t(std::upper_bound(c.start.begin(), c.start.end(), closest) - c.start.begin()) - 1;
    std::string data = m_.training_min_distance > 0
                           ? "; the training data's shortest distance is " + fmt("%.3f", m_.training_min_distance) + " Å"
                           : "";
    throw Error(ErrorKind::CloseContact,
                "atoms " + std::to_string(name_of(ids, c.centres[a])) + " and " +
                    std::to_string(name_of(ids, c.nbr[closest])) + " are " + fmt("%.4f", r_closest) +
                    " Å apart, closer than the model's r_min " + fmt("%g", m_.r_min) + " Å where its tables start" +
                    data + " (" + std::to_string(atoms) +
                    " atom(s) with such a neighbour). The model says nothing about such distances: usually the "
                    "time step or the temperature is too high, or a short-range repulsion is missing. To go on, "
                    "allow it (LAMMPS: `pair_style nvnmd MODEL below_rmin allow`, best inside `pair_style "
                    "hybrid/overlay ... zbl INNER OUTER`; ASE: Calculator(..., allow_below_rmin=True)): the tables "
                    "are then held constant below r_min");
  }
  r.below_rmin += n_close;
}

// ---- wire words (dpfpga/wire.h, generated from contract/wire.py) -----------------------------------------

void Core::encode(const Chunk &c, std::vector<uint64_t> &out) const
{
  const size_t L = size_t(dev_.lanes()), k = c.size();
  size_t beats = 0;
  for (size_t a = 0; a < k; a++) beats += 1 + (c.start[a + 1] - c.start[a] + L - 1) / L;
  out.assign(beats * L, 0);  // zero words are PAD
  size_t at = 0;
  for (size_t a = 0; a < k; a++) {
    const size_t count = c.start[a + 1] - c.start[a];
    const int32_t ctype = types_[size_t(c.centres[a])];
    out[at] = w::input_header::KIND_BITS | w::input_header::CTYPE.put(uint64_t(ctype)) |
              w::input_header::COUNT.put(count) | w::input_header::TAG.put(w::tag_of(uint64_t(c.centres[a])));
    at += L;
    size_t slot = 0;
    for (size_t e = c.start[a]; e < c.start[a + 1]; e++) {
      out[at + slot] = w::input_record::KIND_BITS | w::input_record::TYPE.put(uint64_t(c.rtype[e])) |
                       w::input_record::DX.put(uint64_t(int64_t(c.d[3 * e]))) |
                       w::input_record::DY.put(uint64_t(int64_t(c.d[3 * e + 1]))) |
                       w::input_record::DZ.put(uint64_t(int64_t(c.d[3 * e + 2])));
      if (++slot == L) slot = 0, at += L;
    }
    if (slot) at += L;
  }
}

// ---- the fold: exact integers (host/evaluate.py Evaluator._fold) -----------------------------------------

void Core::fold(const Chunk &c, const std::vector<uint64_t> &out, Result &r)
{
  const size_t L = size_t(dev_.lanes()), k = c.size();
  const std::string dev = dev_.name();
  if (out.size() % L) throw Error(ErrorKind::Device, dev + ": a result of " + std::to_string(out.size()) + " words is not whole beats");
  const size_t beats = out.size() / L;
  // Per chunk, W's partial sums stay far inside int64 (|d| < 2^17, |g| < 2^19, < 2^20 records).
  int64_t wsum[9] = {};
  size_t b = 0;
  for (size_t a = 0; a < k; a++) {
    const int64_t centre = c.centres[a];
    if (b >= beats)
      throw Error(ErrorKind::Device, dev + ": expected " + std::to_string(k) + " result headers, found " + std::to_string(a));
    const uint64_t head = out[b * L];
    if (w::kind(head) != w::HEADER)
      throw Error(ErrorKind::Device, dev + ": result beat " + std::to_string(b) + " should start atom " +
                                         std::to_string(centre) + " with a header, has a " +
                                         (w::kind(head) == w::RECORD ? "record" : "pad") + " word");
    for (size_t s = 1; s < L; s++)
      if (w::kind(out[b * L + s]) != w::PAD)
        throw Error(ErrorKind::Device, dev + ": header beat " + std::to_string(b) + " has non-pad words");
    const uint64_t tag = w::output_header::TAG.get(head), want = w::tag_of(uint64_t(centre));
    if (tag != want)
      throw Error(ErrorKind::DeviceFlag, dev + ": results out of order at atom " + std::to_string(centre) + " (tag " +
                                             std::to_string(tag) + ", expected " + std::to_string(want) + ")");
    const size_t n = size_t(w::output_header::N.get(head)), count = c.start[a + 1] - c.start[a];
    uint32_t flags = uint32_t(w::output_header::FLAGS.get(head));
    r.e_atom[size_t(centre)] = w::output_header::ENERGY.get_signed(head);
    b++;
    const size_t rec_beats = (n + L - 1) / L;
    if (b + rec_beats > beats)
      throw Error(ErrorKind::Device, dev + ": atom " + std::to_string(centre) + ": header says " + std::to_string(n) +
                                         " records, the stream ends first");
    // n < count: the device dropped records (its flags say why); records beyond count are not ours.
    // An atom's records fill its record beats' slots in order: words b*L .. b*L + n - 1.
    const uint64_t *rec = &out[b * L];
    for (size_t q = 0; q < n; q++) {
      const uint64_t word = rec[q];
      if (w::kind(word) != w::RECORD)
        throw Error(ErrorKind::Device, dev + ": atom " + std::to_string(centre) + ": header says " + std::to_string(n) +
                                           " records, stream has " + std::to_string(q));
      if (w::output_record::SATURATED.get(word)) flags |= w::flags::SATURATED;
      if (q >= count) continue;
      const size_t e = c.start[a] + q;
      const int64_t g[3] = {w::output_record::DEDX.get_signed(word), w::output_record::DEDY.get_signed(word),
                            w::output_record::DEDZ.get_signed(word)};
      const int64_t dv[3] = {c.d[3 * e], c.d[3 * e + 1], c.d[3 * e + 2]};
      int64_t *fi = &r.forces[3 * size_t(centre)], *fj = &r.forces[3 * size_t(c.nbr[e])];
      for (int x = 0; x < 3; x++) fi[x] += g[x], fj[x] -= g[x];
      for (int x = 0; x < 3; x++)
        for (int y = 0; y < 3; y++) wsum[3 * x + y] += dv[x] * g[y];
      if (opt_.atomic_virial) {
        int64_t *si = &r.s_atom[9 * size_t(centre)], *sj = &r.s_atom[9 * size_t(c.nbr[e])];
        for (int x = 0; x < 3; x++)
          for (int y = 0; y < 3; y++) si[3 * x + y] += dv[x] * g[y], sj[3 * x + y] += dv[x] * g[y];
      }
    }
    for (size_t q = n; q < rec_beats * L; q++)
      if (w::kind(rec[q]) != w::PAD)
        throw Error(ErrorKind::Device, dev + ": atom " + std::to_string(centre) + ": a word after its " +
                                           std::to_string(n) + " records in its last beat is not pad");
    b += rec_beats;
    r.flags[size_t(centre)] = int64_t(flags);
  }
  if (b != beats)
    throw Error(ErrorKind::Device, dev + ": " + std::to_string(beats - b) + " result beat(s) after the chunk's " +
                                       std::to_string(k) + " atoms");
  for (int x = 0; x < 9; x++) r.virial[x] -= wsum[x];
}

// ---- the loop: chunks in flight ---------------------------------------------------------------------------

Core::Core(const HostModel &model, Device &device, const Options &options) : m_(model), dev_(device), opt_(options)
{
  if (opt_.chunk_atoms < 1) opt_.chunk_atoms = 1;
}

Core::~Core() = default;

void Core::check_types(const int32_t *types, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (types[i] < 0 || types[i] >= m_.ntypes)
      throw Error(ErrorKind::Type, "atom " + std::to_string(i) + ": type " + std::to_string(types[i]) +
                                       " outside the model's type map " + m_.type_map_text());
}

void Core::compute_neighbors(const Domain &d, Result &r)
{
  if (d.nlocal > d.nall) throw Error(ErrorKind::Structure, "more local atoms than atoms");
  check_types(d.types, d.nall);
  for (size_t i = 0; i < d.nall; i++)
    if (!std::isfinite(d.x[3 * i]) || !std::isfinite(d.x[3 * i + 1]) || !std::isfinite(d.x[3 * i + 2]))
      throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + ": position [" + fmt("%.17g", d.x[3 * i]) + ", " +
                                            fmt("%.17g", d.x[3 * i + 1]) + ", " + fmt("%.17g", d.x[3 * i + 2]) +
                                            "] is not finite");
  size_t total = 0;
  for (size_t i = 0; i < d.nlocal; i++) {
    if (d.numneigh[i] < 0) throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + ": negative neighbour count");
    total += size_t(d.numneigh[i]);
  }
  for (size_t k = 0; k < total; k++)
    if (d.neighbors[k] < 0 || size_t(d.neighbors[k]) >= d.nall)
      throw Error(ErrorKind::Structure, "neighbour list entry " + std::to_string(k) + " = " +
                                            std::to_string(d.neighbors[k]) + " is not an atom index (0 .. " +
                                            std::to_string(int64_t(d.nall) - 1) + ")");
  GivenSource src(d, m_.rcut, opt_.chunk_atoms);
  types_ = d.types;
  run(src, d.nlocal, d.nall, d.ids, r);
}

void Core::run(Source &src, size_t ncentres, size_t natoms, const int64_t *ids, Result &r)
{
  const double t0 = seconds();
  r.energy = 0;
  r.forces.assign(3 * natoms, 0);
  for (auto &v : r.virial) v = 0;
  r.e_atom.assign(ncentres, 0);
  r.flags.assign(ncentres, 0);
  r.s_atom.assign(opt_.atomic_virial ? 9 * natoms : 0, 0);
  r.below_rmin = 0;
  r.timings = Timings{};

  // Chunks in flight keep their records (the fold needs d and the neighbour indices): a pool of
  // depth + 1 chunks, kept with the Core so that an MD code's Core allocates their buffers once.
  const size_t depth = size_t(std::max(1, dev_.depth()));
  if (pool_.size() != depth + 1) pool_ = std::vector<Chunk>(depth + 1);
  std::vector<Chunk> &pool = pool_;
  std::deque<size_t> in_flight;
  size_t next_slot = 0;
  std::vector<uint64_t> &spare = spare_;

  auto finish_one = [&]() {
    const size_t slot = in_flight.front();
    in_flight.pop_front();
    double t = seconds();
    std::vector<uint64_t> out = dev_.collect(opt_.timeout);
    r.timings.device_wait += seconds() - t;
    t = seconds();
    fold(pool[slot], out, r);
    if (opt_.on_chunk) opt_.on_chunk(pool[slot].size());
    // The next chunk's words go into this buffer: no fresh pages per chunk.
    if (out.capacity() > spare.capacity()) spare.swap(out);
    r.timings.assemble += seconds() - t;
  };

  dev_.begin();
  try {
    while (true) {
      double t = seconds();
      Chunk &c = pool[next_slot];
      std::vector<uint64_t> words;
      try {
        if (!src.next(c)) break;
        check_and_quantize(c, ids, r);
        words.swap(spare);
        encode(c, words);
      } catch (...) {
        // Refused (a structure error, a close pair, ...) with earlier chunks still on the device: take
        // their results, unread, so that the next evaluation on this device reads its own.
        while (!in_flight.empty()) {
          in_flight.pop_front();
          try {
            dev_.collect(opt_.timeout);
          } catch (...) {
            break;  // the device failed as well: its own error handling (end(), a reopen) takes over
          }
        }
        throw;
      }
      r.timings.neighbors_encode += seconds() - t;
      while (in_flight.size() >= depth) finish_one();
      dev_.submit(std::move(words), c.size());
      in_flight.push_back(next_slot);
      next_slot = (next_slot + 1) % pool.size();
    }
    while (!in_flight.empty()) finish_one();
  } catch (...) {
    dev_.end();
    throw;
  }
  dev_.end();

  if (opt_.strict) {
    const int64_t allow = opt_.allow_below_rmin ? int64_t(w::flags::R_BELOW_MIN) : 0;
    size_t n_bad = 0, first = 0;
    for (size_t a = 0; a < ncentres; a++)
      if (r.flags[a] & ~allow) {
        if (!n_bad) first = a;
        n_bad++;
      }
    if (n_bad)
      throw Error(ErrorKind::DeviceFlag, "atom " + std::to_string(name_of(ids, int64_t(first))) + ": " +
                                             describe_flags(uint32_t(r.flags[first])) + " (" + std::to_string(n_bad) +
                                             " atom(s) flagged); results are not usable");
  }
  for (size_t a = 0; a < ncentres; a++) {
    r.e_atom[a] += m_.energy_bias[size_t(types_[a])];
    r.energy += r.e_atom[a];
  }
  r.timings.total = seconds() - t0;
}

}  // namespace dpfpga
