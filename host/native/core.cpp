/* The native host core (core.h): records, checks, wire encoding, chunks in flight, exact fold.
 *
 * Read top-down: the model text, the messages (each the Python path's, word for word), a chunk's
 * records and their checks, encoding, folding, and the loop that keeps chunks in flight. */
#include "dpfpga/core.h"

#include "chunk.h"
#include "simd.h"
#include "dpfpga/wire.h"
#include "pipeline.h"

#include <algorithm>
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

int64_t name_of(const int64_t *ids, int64_t index) { return ids ? ids[index] : index; }

}  // namespace

// ---- a chunk's records: one pass from pairs to wire words (chunk.h) -----------------------------------

namespace {

/* v.size() >= need; grown by half again at least, so that a chunk's growth costs few copies. */
template <typename T>
void grow(std::vector<T> &v, size_t need)
{
  if (v.size() < need) v.resize(std::max(need, v.size() + v.size() / 2));
}

}  // namespace

uint64_t *Core::Chunk::slots(size_t n)
{
  const size_t L = enc->lanes, r = records();
  // A header beat, n records and a last beat's padding, and the kernels' slack.
  grow(words, n_words + L + n + L + records::SLACK);
  grow(nbr, r + n + records::SLACK);
  if (enc->keep_records) grow(rec, r + n);
  return words.data() + n_words + L;
}

bool Core::Chunk::end_centre(int64_t i, const records::Found &f)
{
  const Encoding &e = *enc;
  const size_t L = e.lanes, m = f.kept, base = records();
  // The header beat (the header, then pad words), the records in beats of L, the last beat padded.  A
  // count beyond the COUNT field is above sel as well: such a chunk is refused before it is sent.
  uint64_t *out = words.data() + n_words;
  out[0] = w::input_header::KIND_BITS | w::input_header::CTYPE.put(uint64_t(e.rc.types[i])) |
           w::input_header::COUNT.put(m) | w::input_header::TAG.put(w::tag_of(uint64_t(i)));
  const size_t padded = m + (L - m % L) % L;
  std::fill(out + 1, out + L, uint64_t(w::PAD));
  std::fill(out + L + m, out + L + padded, uint64_t(w::PAD));
  if (e.keep_records) std::copy(out + L, out + L + m, rec.begin() + ptrdiff_t(base));
  centres.push_back(i);
  start.push_back(base + m);
  n_words += L + padded;
  // sel per type (model.neighbors.check_sel): the first centre above it, its lowest such type.  No
  // type can be above its sel with no more records than the smallest sel.
  for (int t = 0; m > e.min_sel && t < e.ntypes; t++) {
    const size_t count = records::count_type(out + L, m, unsigned(t));
    if (count > size_t(e.sel[t])) {
      if (problems.sel_atoms == 0)
        problems.sel_centre = centres.size() - 1, problems.sel_type = size_t(t), problems.sel_count = int(count);
      problems.sel_atoms++;
      break;
    }
  }
  if (f.bad || (f.close && e.locate_close)) return true;
  problems.close_records += f.close;
  problems.close_atoms += f.close != 0;
  return false;
}

void Core::Chunk::add_centre(int64_t i, const Pairs &p)
{
  uint64_t *out = slots(p.n);
  const records::Found f = records::given(p.n, p.x.data(), p.y.data(), p.z.data(), p.j.data(), enc->rc, out);
  std::copy(p.j.begin(), p.j.begin() + ptrdiff_t(p.n), nbr_slots());
  if (end_centre(i, f)) note_last_centre(p);
}

/* The records of the centre just added, again, for what failed: the first component outside the coord
 * format (record order, then x, y, z), and the records below r_min with the closest pair's distance
 * (|r_ij| the Python path's way: sqrt((x*x + y*y) + z*z)), skipping the records that are out of range. */
void Core::Chunk::note_last_centre(const Pairs &p)
{
  const Encoding &e = *enc;
  const size_t base = start[start.size() - 2];
  bool atom_close = false;
  for (size_t k = 0; k < p.n; k++) {
    const double v[3] = {p.x[k], p.y[k], p.z[k]};
    double q[3];
    bool bad = false;
    for (int a = 0; a < 3; a++) {
      const double y = v[a] * e.rc.scale + 0.5;
      const bool ok = y >= e.rc.lo && y < e.rc.hi;
      q[a] = ok ? std::floor(y) : 0;
      if (!ok && !bad && problems.range_records == 0)
        problems.range_record = base + k, problems.range_value = v[a];
      bad = bad || !ok;
    }
    if (bad) {
      problems.range_records++;
      continue;
    }
    if ((q[0] * q[0] + q[1] * q[1]) + q[2] * q[2] >= e.rc.x_min) continue;
    problems.close_records++;
    atom_close = true;
    const double r = std::sqrt((v[0] * v[0] + v[1] * v[1]) + v[2] * v[2]);
    if (r < problems.close_r) problems.close_r = r, problems.close_record = base + k;
  }
  problems.close_atoms += atom_close;
}

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
    const size_t hi = std::min(d_.nlocal, lo_ + chunk_);
    const double *x = d_.x;
    for (size_t i = lo_; i < hi; i++) {
      const size_t n_cand = start_[i + 1] - start_[i];
      // Candidates (a skin's worth more than the pairs) tested and encoded in one pass, in place.
      uint64_t *out = c.slots(n_cand);
      const records::Found f =
          d_.neighbors ? records::listed(int64_t(i), d_.neighbors + start_[i], n_cand, x, rc2_, c.enc->rc, out,
                                         c.nbr_slots())
                       : records::listed(int64_t(i), d_.neighbors32 + start_[i], n_cand, x, rc2_, c.enc->rc, out,
                                         c.nbr_slots());
      if (f.self) throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + " is listed as its own neighbour");
      if (!c.end_centre(int64_t(i), f)) continue;
      // Something to name: the kept pairs' r_ij again, as the kernel computed them.
      const int64_t *kept = c.nbr.data() + c.start[c.size() - 1];
      p_.room(f.kept);
      p_.n = f.kept;
      for (size_t k = 0; k < f.kept; k++) {
        const int64_t j = kept[k];
        p_.j[k] = j;
        p_.x[k] = x[3 * j] - x[3 * i], p_.y[k] = x[3 * j + 1] - x[3 * i + 1], p_.z[k] = x[3 * j + 2] - x[3 * i + 2];
      }
      c.note_last_centre(p_);
    }
    lo_ = hi;
    return true;
  }

 private:
  const Domain &d_;
  double rc2_;
  size_t chunk_, lo_ = 0;
  std::vector<size_t> start_;
  Pairs p_;  // one centre's pairs inside rcut
};

}  // namespace

// ---- the checks, in the Python path's order (host/evaluate.py Evaluator._evaluate) -----------------------

/* Refuse a chunk for what add_centre noted: more neighbours than sel (model.neighbors.check_sel), then a
 * displacement outside the coord format (model.assembly.quantize_displacements), then a pair below r_min
 * (model.assembly.close_contact_error) unless allowed; each message the Python path's. */
void Core::check(const Chunk &c, const int64_t *ids, Result &r) const
{
  const Chunk::Problems &p = c.problems;
  auto centre_of = [&](size_t record) {
    return size_t(std::upper_bound(c.start.begin(), c.start.end(), record) - c.start.begin()) - 1;
  };
  if (p.sel_atoms)
    throw Error(ErrorKind::NeighborOverflow,
                "atom " + std::to_string(name_of(ids, c.centres[p.sel_centre])) + " has " +
                    std::to_string(p.sel_count) + " neighbours of type " + m_.type_map[p.sel_type] +
                    " inside rcut, more than sel[" + std::to_string(p.sel_type) + "]=" +
                    std::to_string(m_.sel[p.sel_type]) + " (" + std::to_string(p.sel_atoms) +
                    " atom(s) affected); the hardware holds at most sel neighbours per type and never "
                    "truncates: increase sel and re-export the model");
  if (p.range_records)
    throw Error(ErrorKind::InputRange,
                "atom " + std::to_string(name_of(ids, c.centres[centre_of(p.range_record)])) +
                    ": displacement component " + fmt("%.6g", p.range_value) + " Å does not fit the input format " +
                    m_.coord_describe + " (|dx| <= " + fmt("%.4g", m_.coord_max_value) + " Å); " +
                    std::to_string(p.range_records) + " record(s) affected");
  if (p.close_records && !opt_.allow_below_rmin) {
    std::string data = m_.training_min_distance > 0
                           ? "; the training data's shortest distance is " + fmt("%.3f", m_.training_min_distance) + " Å"
                           : "";
    throw Error(ErrorKind::CloseContact,
                "atoms " + std::to_string(name_of(ids, c.centres[centre_of(p.close_record)])) + " and " +
                    std::to_string(name_of(ids, c.nbr[p.close_record])) + " are " + fmt("%.4f", p.close_r) +
                    " Å apart, closer than the model's r_min " + fmt("%g", m_.r_min) + " Å where its tables start" +
                    data + " (" + std::to_string(p.close_atoms) +
                    " atom(s) with such a neighbour). The model says nothing about such distances: usually the "
                    "time step or the temperature is too high, or a short-range repulsion is missing. To go on, "
                    "allow it (LAMMPS: `pair_style nvnmd MODEL below_rmin allow`, best inside `pair_style "
                    "hybrid/overlay ... zbl INNER OUTER`; ASE: Calculator(..., allow_below_rmin=True)): the tables "
                    "are then held constant below r_min");
  }
  r.below_rmin += p.close_records;
}

// ---- the fold: exact integers (host/evaluate.py Evaluator._fold) -----------------------------------------

namespace {

/* r_ij (x) dE/dr_ij of one record, from its input word (d, coord format) and its output word (g,
 * format F): |d| <= 2^17 and |g| <= 2^19 fit int32, their product int64. */
inline void pair_virial(uint64_t in, uint64_t out, int64_t *s)
{
  const int32_t d[3] = {int32_t(w::input_record::DX.get_signed(in)), int32_t(w::input_record::DY.get_signed(in)),
                        int32_t(w::input_record::DZ.get_signed(in))};
  const int32_t g[3] = {int32_t(w::output_record::DEDX.get_signed(out)),
                        int32_t(w::output_record::DEDY.get_signed(out)),
                        int32_t(w::output_record::DEDZ.get_signed(out))};
  for (int x = 0; x < 3; x++)
    for (int y = 0; y < 3; y++) s[3 * x + y] = int64_t(d[x]) * int64_t(g[y]);
}

}  // namespace

void Core::fold(const Chunk &c, const std::vector<uint64_t> &out, Result &r)
{
  const size_t L = size_t(dev_.lanes()), k = c.size();
  if (out.size() % L)
    throw Error(ErrorKind::Device, dev_.name() + ": a result of " + std::to_string(out.size()) + " words is not whole beats");
  const size_t beats = out.size() / L;
  int64_t *forces = buf_.forces.data();  // stride_ per atom
  size_t b = 0;
  for (size_t a = 0; a < k; a++) {
    const int64_t centre = c.centres[a];
    if (b >= beats)
      throw Error(ErrorKind::Device, dev_.name() + ": expected " + std::to_string(k) + " result headers, found " +
                                         std::to_string(a));
    const uint64_t head = out[b * L];
    if (w::kind(head) != w::HEADER)
      throw Error(ErrorKind::Device, dev_.name() + ": result beat " + std::to_string(b) + " should start atom " +
                                         std::to_string(centre) + " with a header, has a " +
                                         (w::kind(head) == w::RECORD ? "record" : "pad") + " word");
    for (size_t s = 1; s < L; s++)
      if (w::kind(out[b * L + s]) != w::PAD)
        throw Error(ErrorKind::Device, dev_.name() + ": header beat " + std::to_string(b) + " has non-pad words");
    const uint64_t tag = w::output_header::TAG.get(head), want = w::tag_of(uint64_t(centre));
    if (tag != want)
      throw Error(ErrorKind::DeviceFlag, dev_.name() + ": results out of order at atom " + std::to_string(centre) +
                                             " (tag " + std::to_string(tag) + ", expected " + std::to_string(want) + ")");
    const size_t n = size_t(w::output_header::N.get(head)), count = c.start[a + 1] - c.start[a];
    uint32_t flags = uint32_t(w::output_header::FLAGS.get(head));
    r.e_atom[size_t(centre)] = w::output_header::ENERGY.get_signed(head);
    b++;
    const size_t rec_beats = (n + L - 1) / L;
    if (b + rec_beats > beats)
      throw Error(ErrorKind::Device, dev_.name() + ": atom " + std::to_string(centre) + ": header says " +
                                         std::to_string(n) + " records, the stream ends first");
    // An atom's records fill its record beats' slots in order: words b*L .. b*L + n - 1, then pad.
    // Their kinds and saturation bits are tested for all at once: one branch per atom, not per word.
    const uint64_t *o = out.data() + b * L;
    uint64_t not_record = 0, any = 0, not_pad = 0;
    for (size_t q = 0; q < n; q++) not_record |= w::kind(o[q]) ^ w::RECORD, any |= o[q];
    for (size_t q = n; q < rec_beats * L; q++) not_pad |= o[q];
    if (not_record) {
      size_t q = 0;
      while (w::kind(o[q]) == w::RECORD) q++;
      throw Error(ErrorKind::Device, dev_.name() + ": atom " + std::to_string(centre) + ": header says " +
                                         std::to_string(n) + " records, stream has " + std::to_string(q));
    }
    if (not_pad)
      throw Error(ErrorKind::Device, dev_.name() + ": atom " + std::to_string(centre) + ": a word after its " +
                                         std::to_string(n) + " records in its last beat is not pad");
    if (w::output_record::SATURATED.get(any)) flags |= w::flags::SATURATED;
    // n < count: the device dropped records (its flags say why); records beyond count are not ours.
    const size_t used = std::min(n, count);
    const int64_t *nb = c.nbr.data() + c.start[a];  // (an atom without records may end the list)
    if (opt_.virial) {
      int64_t w9[9] = {};  // one centre's sum, exact in int64; the total in __int128
      records::scatter_forces_virial(centre, used, o, c.rec.data() + c.start[a], nb, forces, stride_, w9);
      for (int x = 0; x < 9; x++) r.virial[x] -= w9[x];
    } else {
      records::scatter_forces(centre, used, o, nb, forces, stride_);
    }
    if (opt_.atomic_virial)
      for (size_t q = 0; q < used; q++) {
        int64_t s[9];
        pair_virial(c.rec[c.start[a] + q], o[q], s);
        int64_t *si = &r.s_atom[9 * size_t(centre)], *sj = &r.s_atom[9 * size_t(nb[q])];
        for (int x = 0; x < 9; x++) si[x] += s[x], sj[x] += s[x];
      }
    b += rec_beats;
    r.flags[size_t(centre)] = int64_t(flags);
  }
  if (b != beats)
    throw Error(ErrorKind::Device, dev_.name() + ": " + std::to_string(beats - b) + " result beat(s) after the chunk's " +
                                       std::to_string(k) + " atoms");
}

// ---- the loop: chunks in flight ---------------------------------------------------------------------------

Core::Core(const HostModel &model, Device &device, const Options &options) : m_(model), dev_(device), opt_(options)
{
  if (opt_.chunk_atoms < 1) opt_.chunk_atoms = 1;
}

Core::Core(const HostModel &model, Device &device, const Options &options, Buffers &&buffers)
    : Core(model, device, options)
{
  buf_ = std::move(buffers);
}

Core::~Core() = default;
Core::Buffers::Buffers() = default;
Core::Buffers::~Buffers() = default;
Core::Buffers::Buffers(Buffers &&) noexcept = default;
Core::Buffers &Core::Buffers::operator=(Buffers &&) noexcept = default;

/* The checks over every atom and list entry come first, as in the Python path; each is one branch-free
 * pass, and only a failing one goes back to find and name the first culprit. */
void Core::check_types(const int32_t *types, size_t n)
{
  bool bad = false;
  for (size_t i = 0; i < n; i++) bad |= uint32_t(types[i]) >= uint32_t(m_.ntypes);
  if (!bad) return;
  for (size_t i = 0; i < n; i++)
    if (types[i] < 0 || types[i] >= m_.ntypes)
      throw Error(ErrorKind::Type, "atom " + std::to_string(i) + ": type " + std::to_string(types[i]) +
                                       " outside the model's type map " + m_.type_map_text());
}

void Core::compute_neighbors(const Domain &d, Result &r)
{
  if (d.nlocal > d.nall) throw Error(ErrorKind::Structure, "more local atoms than atoms");
  check_types(d.types, d.nall);
  bool bad = false;
  for (size_t k = 0; k < 3 * d.nall; k++) bad |= !(std::fabs(d.x[k]) <= std::numeric_limits<double>::max());
  for (size_t i = 0; bad && i < d.nall; i++)
    if (!std::isfinite(d.x[3 * i]) || !std::isfinite(d.x[3 * i + 1]) || !std::isfinite(d.x[3 * i + 2]))
      throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + ": position [" + fmt("%.17g", d.x[3 * i]) + ", " +
                                            fmt("%.17g", d.x[3 * i + 1]) + ", " + fmt("%.17g", d.x[3 * i + 2]) +
                                            "] is not finite");
  // The list's entries: checked unless the caller says it is the one this core checked last time.
  const bool checked = d.list_unchanged && list_checked_ && d.nall == list_nall_;
  list_checked_ = false;
  if (!checked) {
    size_t total = 0;
    for (size_t i = 0; i < d.nlocal; i++) {
      if (d.numneigh[i] < 0)
        throw Error(ErrorKind::Structure, "atom " + std::to_string(i) + ": negative neighbour count");
      total += size_t(d.numneigh[i]);
    }
    if (!d.neighbors == !d.neighbors32)
      throw Error(ErrorKind::Structure, "a neighbour list needs its entries as int64 or as int32 (one of them)");
    auto entry = [&d](size_t k) { return d.neighbors ? d.neighbors[k] : int64_t(d.neighbors32[k]); };
    if (d.neighbors)
      for (size_t k = 0; k < total; k++) bad |= uint64_t(d.neighbors[k]) >= uint64_t(d.nall);  // negative: huge
    else
      for (size_t k = 0; k < total; k++) bad |= uint64_t(int64_t(d.neighbors32[k])) >= uint64_t(d.nall);
    for (size_t k = 0; bad && k < total; k++)
      if (entry(k) < 0 || size_t(entry(k)) >= d.nall)
        throw Error(ErrorKind::Structure, "neighbour list entry " + std::to_string(k) + " = " +
                                              std::to_string(entry(k)) + " is not an atom index (0 .. " +
                                              std::to_string(int64_t(d.nall) - 1) + ")");
  }
  list_checked_ = true, list_nall_ = d.nall;
  GivenSource src(d, m_.rcut, opt_.chunk_atoms);
  types_ = d.types;
  run(src, d.nlocal, d.nall, d.ids, r);
}

void Core::run(Source &src, size_t ncentres, size_t natoms, const int64_t *ids, Result &r)
{
  const double t0 = seconds();
  r.energy = 0;
  // The fold's forces in the kernels' layout (records::force_stride() per atom), r.forces at the end.
  const size_t stride = stride_ = records::force_stride();
  buf_.forces.assign(stride * natoms, 0);
  for (auto &v : r.virial) v = 0;
  r.e_atom.assign(ncentres, 0);
  r.flags.assign(ncentres, 0);
  r.s_atom.assign(opt_.atomic_virial ? 9 * natoms : 0, 0);
  r.below_rmin = 0;
  r.pair_list = 0;
  r.timings = Timings{};

  // Chunks in flight keep their records (the fold needs d and the neighbour indices): a pool of
  // depth + 1 chunks, kept with the Core so that an MD code's Core allocates their buffers once.
  const size_t depth = size_t(std::max(1, dev_.depth()));
  if (buf_.pool.size() != depth + 1) buf_.pool = std::vector<Chunk>(depth + 1);
  std::vector<Chunk> &pool = buf_.pool;
  std::deque<size_t> in_flight;
  size_t next_slot = 0;
  std::vector<uint64_t> &spare = buf_.spare;

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

  // What the chunks need, for this evaluation.
  Encoding enc;
  enc.rc.scale = std::ldexp(1.0, m_.coord_frac);
  enc.rc.lo = double(m_.coord_lo);
  enc.rc.hi = double(m_.coord_hi) + 1.0;
  enc.rc.top = std::nextafter(enc.rc.hi, enc.rc.lo);  // inside: floor(top) = coord_hi
  enc.rc.x_min = double(m_.table_x_min);
  enc.rc.types = types_;
  enc.rc.range_fits = records::fits_coord_format(m_.rcut, enc.rc);
  enc.rc.r2_near = records::near_bound(enc.rc);
  enc.ntypes = m_.ntypes;
  enc.sel = m_.sel.data();
  enc.min_sel = size_t(std::max(0, *std::min_element(m_.sel.begin(), m_.sel.end())));
  enc.lanes = size_t(dev_.lanes());
  enc.keep_records = opt_.virial || opt_.atomic_virial;
  enc.locate_close = !opt_.allow_below_rmin;

  dev_.begin();
  try {
    while (true) {
      double t = seconds();
      Chunk &c = pool[next_slot];
      c.clear();
      c.enc = &enc;
      c.words.swap(spare);  // the words buffer of a chunk collected earlier: no fresh pages per chunk
      try {
        if (!src.next(c)) break;
        check(c, ids, r);
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
      c.seal();
      dev_.submit(std::move(c.words), c.size());
      in_flight.push_back(next_slot);
      next_slot = (next_slot + 1) % pool.size();
    }
    while (!in_flight.empty()) finish_one();
  } catch (...) {
    dev_.end();
    throw;
  }
  dev_.end();
  if (stride == 3) {
    r.forces.swap(buf_.forces);
  } else {
    r.forces.resize(3 * natoms);
    for (size_t a = 0; a < natoms; a++)
      for (size_t x = 0; x < 3; x++) r.forces[3 * a + x] = buf_.forces[stride * a + x];
  }

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
