/* Neighbours of a structure with a lattice (the ASE path, host/neighbors.py NeighborChunks): a cell
 * list in the search basis, chunks of centre atoms in cell order.
 *
 * The search itself may look a hair further than rcut (fractional cells, rounding): what decides is
 * the test the Python path makes on the vectors it hands out,
 *
 *   r_ij = (x_j - x_i) + ((S0 * c0 + S1 * c1) + S2 * c2),   kept when (x*x + y*y) + z*z < rcut^2,
 *
 * with S the image's shift in the caller's cell (rows c0, c1, c2).  Each pair (i, j, S) within rcut
 * is unique, so both paths find the same set and give it the same bits.  Structure-level checks (finite
 * positions and cell, atoms inside a non-periodic box, degenerate lattices) and the search basis come
 * from Python (host/native.py), where the Python path makes them: the same errors, once.
 *
 * With Options::skin the search goes to rcut + skin and its pairs (PairCache, chunk.h) serve the next
 * evaluations while no atom has moved skin/2: CachedSource tests them as a neighbour list is tested,
 * on the same vectors. */
#include "dpfpga/core.h"

#include "chunk.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

namespace dpfpga {
namespace {

/* Cells are at least rcut / SPLIT wide.  SPLIT = 1 (27 cells around a centre) measured faster than 2
 * (125 half-width cells, fewer candidates): a neighbourhood is built once per cell (and wrap), and with
 * ~13 atoms per cell instead of ~2 it is shared by more centres; the extra candidates are tested
 * without a branch, 8 at a time. */
constexpr int SPLIT = 1;
/* The search radius's margin: candidates a hair beyond rcut go to the final test. */
constexpr double SEARCH_MARGIN = 1e-6;

void invert3(const double *m, double *inv)
{
  const double a = m[0], b = m[1], c = m[2], d = m[3], e = m[4], f = m[5], g = m[6], h = m[7], i = m[8];
  const double A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
  const double det = a * A + b * B + c * C;
  inv[0] = A / det, inv[1] = -(b * i - c * h) / det, inv[2] = (b * f - c * e) / det;
  inv[3] = B / det, inv[4] = (a * i - c * g) / det, inv[5] = -(a * f - c * d) / det;
  inv[6] = C / det, inv[7] = -(a * h - b * g) / det, inv[8] = (a * e - b * d) / det;
}

/* More neighbours than any atom may have (sum(sel)): refused in check_sel's words (the Python path's),
 * for the first type above its sel, counting the chunk's earlier centres that exceed sel too. */
[[noreturn]] void too_many(const HostModel &m, const int32_t *types, size_t i, const int64_t *j, size_t n,
                           const Core::Chunk &c)
{
  const size_t nt = size_t(m.ntypes);
  std::vector<int> count(nt, 0);
  for (size_t e = 0; e < n; e++) count[size_t(types[j[e]])]++;
  size_t bad_t = 0;
  while (bad_t + 1 < nt && count[bad_t] <= m.sel[bad_t]) bad_t++;
  const size_t n_bad = 1 + c.problems.sel_atoms;  // this centre and the chunk's earlier ones above sel
  throw Error(ErrorKind::NeighborOverflow,
              "atom " + std::to_string(i) + " has " + std::to_string(count[bad_t]) + " neighbours of type " +
                  m.type_map[bad_t] + " inside rcut, more than sel[" + std::to_string(bad_t) + "]=" +
                  std::to_string(m.sel[bad_t]) + " (" + std::to_string(n_bad) +
                  " atom(s) affected); the hardware holds at most sel neighbours per type and never "
                  "truncates: increase sel and re-export the model");
}

class CellSource : public Core::Source {
 public:
  /* The pairs within `radius`: rcut (chunks for the device), or rcut + skin (collect: a pair list). */
  CellSource(const Structure &s, const HostModel &m, size_t chunk_atoms, double radius)
      : s_(s), m_(m), rc2_(radius * radius), chunk_(chunk_atoms), max_nb_(m.sum_sel())
  {
    const size_t n = s.natoms;
    const double rs = radius * (1 + SEARCH_MARGIN);
    double inv[9];
    invert3(s.basis, inv);
    double delta[3], lo[3], span[3];
    for (int a = 0; a < 3; a++) {
      // Fractional width of one cutoff along axis a: rcut over the distance between lattice planes.
      delta[a] = rs * std::sqrt(inv[a] * inv[a] + inv[3 + a] * inv[3 + a] + inv[6 + a] * inv[6 + a]);
      span[a] = s.pbc[a] ? 1.0 : 1.0 + 2 * delta[a];
      lo[a] = s.pbc[a] ? 0.0 : -delta[a];
      ncell_[a] = std::max<int64_t>(1, int64_t(std::floor(SPLIT * span[a] / delta[a])));
    }
    // A sparse box (vacuum) would have far more cells than atoms: coarser cells stay correct.
    while (ncell_[0] * ncell_[1] * ncell_[2] > int64_t(4 * n + 64)) {
      int a = int(std::max_element(ncell_, ncell_ + 3) - ncell_);
      ncell_[a] = (ncell_[a] + 1) / 2;
    }
    for (int a = 0; a < 3; a++) reach_[a] = int64_t(std::ceil(delta[a] / (span[a] / double(ncell_[a]))));
    // Fractional coordinates, periodic wraps, cells; positions wrapped into the cell for the search.
    wrap_.resize(3 * n);
    cell_of_.resize(n);
    std::vector<int64_t> c3(3 * n);
    for (size_t i = 0; i < n; i++) {
      double p[3], f[3];
      for (int a = 0; a < 3; a++) p[a] = s.positions[3 * i + a] - s.origin[a];
      for (int a = 0; a < 3; a++) f[a] = p[0] * inv[a] + p[1] * inv[3 + a] + p[2] * inv[6 + a];
      for (int a = 0; a < 3; a++) {
        wrap_[3 * i + a] = s.pbc[a] ? int64_t(std::floor(f[a])) : 0;
        const double fw = f[a] - double(wrap_[3 * i + a]);
        c3[3 * i + a] = std::clamp<int64_t>(int64_t(std::floor((fw - lo[a]) / (span[a] / double(ncell_[a])))), 0,
                                            ncell_[a] - 1);
      }
      cell_of_[i] = (c3[3 * i] * ncell_[1] + c3[3 * i + 1]) * ncell_[2] + c3[3 * i + 2];
    }
    // Counting sort of the atoms by cell: cell_start_[c] .. cell_start_[c + 1] - 1 in order_.
    const size_t ncells = size_t(ncell_[0] * ncell_[1] * ncell_[2]);
    cell_start_.assign(ncells + 1, 0);
    for (size_t i = 0; i < n; i++) cell_start_[size_t(cell_of_[i]) + 1]++;
    for (size_t c = 0; c < ncells; c++) cell_start_[c + 1] += cell_start_[c];
    order_.resize(n);
    std::vector<size_t> fill(cell_start_.begin(), cell_start_.end() - 1);
    for (size_t i = 0; i < n; i++) order_[fill[size_t(cell_of_[i])]++] = int64_t(i);
    // Within a cell, atoms of one wrap in a row: the centres of a group (cell, wrap) share a neighbourhood.
    const int64_t *wr = wrap_.data();
    for (size_t c = 0; c < ncells; c++)
      std::stable_sort(order_.begin() + ptrdiff_t(cell_start_[c]), order_.begin() + ptrdiff_t(cell_start_[c + 1]),
                       [wr](int64_t a, int64_t b) {
                         return std::lexicographical_compare(wr + 3 * a, wr + 3 * a + 3, wr + 3 * b, wr + 3 * b + 3);
                       });
    // Runs of one wrap within each cell: cell c's runs are run_start_[cell_runs_[c]] .. up to the next cell's.
    run_start_.clear();
    cell_runs_.assign(ncells + 1, 0);
    for (size_t c = 0; c < ncells; c++) {
      cell_runs_[c] = run_start_.size();
      for (size_t q = cell_start_[c]; q < cell_start_[c + 1]; q++)
        if (q == cell_start_[c] || !std::equal(wr + 3 * order_[q], wr + 3 * order_[q] + 3, wr + 3 * order_[q - 1]))
          run_start_.push_back(q);
    }
    cell_runs_[ncells] = run_start_.size();
    run_start_.push_back(n);
    // Wraps and positions in cell order (the search reads a cell's atoms in a row).
    sw_.resize(3 * n);
    for (auto *v : {&cx_, &cy_, &cz_}) v->resize(n);
    for (size_t q = 0; q < n; q++) {
      const size_t i = size_t(order_[q]);
      for (int a = 0; a < 3; a++) sw_[3 * q + a] = wrap_[3 * i + a];
      cx_[q] = s.positions[3 * i], cy_[q] = s.positions[3 * i + 1], cz_[q] = s.positions[3 * i + 2];
    }
    // Per axis, the cell coordinate and image shift of every (cell, offset): no division per visit.
    for (int a = 0; a < 3; a++) {
      const int64_t span_o = 2 * reach_[a] + 1;
      axis_[a].assign(size_t(ncell_[a] * span_o), Step{0, 0, false});
      for (int64_t ci = 0; ci < ncell_[a]; ci++)
        for (int64_t o = -reach_[a]; o <= reach_[a]; o++) {
          Step &st = axis_[a][size_t(ci * span_o + o + reach_[a])];
          int64_t u = ci + o;
          if (s.pbc[a]) {
            st.shift = u >= 0 ? u / ncell_[a] : -((-u + ncell_[a] - 1) / ncell_[a]);
            st.u = u - st.shift * ncell_[a];
            st.ok = true;
          } else {
            st.u = u, st.shift = 0, st.ok = u >= 0 && u < ncell_[a];
          }
        }
    }
  }

  bool next(Core::Chunk &c) override
  {
    if (done_ >= s_.natoms) return false;
    const size_t hi = std::min(s_.natoms, done_ + chunk_);
    for (size_t k = done_; k < hi; k++) centre(k, c);
    done_ = hi;
    return true;
  }

  /* Every centre's pairs within the radius into pc (its order, start, image, shifts); false, pc left
   * invalid, when a centre has more than `cap` (a pile of atoms: the direct search refuses it) or all
   * of them more than `max_pairs`. */
  bool collect(Core::PairCache &pc, size_t cap, size_t max_pairs)
  {
    const size_t n = s_.natoms;
    shifts_ = &pc.shifts;  // tags from here on (build_hood)
    image_of_.clear();
    pc.valid = false;
    pc.shifts.clear();
    pc.order.assign(order_.begin(), order_.end());
    pc.start.assign(1, 0);
    pc.image.clear();
    for (size_t k = 0; k < n; k++) {
      const size_t m = pairs_of(k);  // p_.j: tags
      const size_t rows = pc.shifts.size() / 4;  // images a tag holds: below 2^(63 - IMAGE_SHIFT)
      if (m > cap || pc.image.size() + m > max_pairs || rows >= (size_t(1) << (63 - records::IMAGE_SHIFT)))
        return false;
      pc.image.insert(pc.image.end(), p_.j.begin(), p_.j.begin() + ptrdiff_t(m));
      pc.start.push_back(pc.image.size());
    }
    pc.valid = true;
    return true;
  }

 private:
  const Structure &s_;
  const HostModel &m_;
  double rc2_;
  size_t chunk_, done_ = 0;
  int max_nb_;
  int64_t ncell_[3], reach_[3];
  std::vector<int64_t> wrap_, cell_of_, order_, sw_;  // sw_: wraps in cell order
  std::vector<double> cx_, cy_, cz_;                   // positions in cell order
  struct Step {
    int64_t u, shift;
    bool ok;
  };
  std::vector<Step> axis_[3];
  std::vector<size_t> cell_start_;
  std::vector<size_t> run_start_, cell_runs_;  // runs of atoms of one wrap within each cell

  /* The cells around one cell, with the image shift (search basis): the same for every centre in that
   * cell, and centres come in cell order, so it is built once per cell. */
  struct Visit {
    size_t cell;
    int64_t S[3];
  };
  std::vector<Visit> visits_;
  int64_t visits_of_ = -1;

  /* The neighbourhood of a group of centres (one cell, one wrap): every atom of the visited cells with
   * its image's shift in the caller's cell, structure of arrays, which records::images() tests for
   * each centre of the group (one long run, not a short one per cell).  `j`: the atom, and for collect
   * its image's row of shifts above it (records::IMAGE_SHIFT); `home`: the atom where its image is
   * unshifted (B = 0), else -1 (a centre never pairs with its own unshifted image). */
  struct Hood {
    std::vector<double> px, py, pz, sx, sy, sz;
    std::vector<int64_t> j, home;
    size_t n = 0;
  } hood_;
  std::vector<double> *shifts_ = nullptr;           // collect's table of shifts (tags in Hood::j)
  std::unordered_map<uint64_t, uint32_t> image_of_;  // its rows, by T
  int64_t hood_cell_ = -1, hood_wrap_[3] = {};
  Pairs p_;  // one centre's pairs inside rcut

  void plan_visits(int64_t cid)
  {
    visits_.clear();
    visits_of_ = cid;
    const int64_t ci[3] = {cid / (ncell_[1] * ncell_[2]), (cid / ncell_[2]) % ncell_[1], cid % ncell_[2]};
    const Step *tx = &axis_[0][size_t(ci[0] * (2 * reach_[0] + 1))];
    const Step *ty = &axis_[1][size_t(ci[1] * (2 * reach_[1] + 1))];
    const Step *tz = &axis_[2][size_t(ci[2] * (2 * reach_[2] + 1))];
    for (int64_t ox = 0; ox <= 2 * reach_[0]; ox++) {
      if (!tx[ox].ok) continue;
      for (int64_t oy = 0; oy <= 2 * reach_[1]; oy++) {
        if (!ty[oy].ok) continue;
        for (int64_t oz = 0; oz <= 2 * reach_[2]; oz++) {
          if (!tz[oz].ok) continue;
          const size_t cell = size_t((tx[ox].u * ncell_[1] + ty[oy].u) * ncell_[2] + tz[oz].u);
          if (cell_start_[cell] == cell_start_[cell + 1]) continue;
          visits_.push_back(Visit{cell, {tx[ox].shift, ty[oy].shift, tz[oz].shift}});
        }
      }
    }
  }

  /* collect's row of shifts for image T (caller's cell), added when new. */
  uint32_t image_row(const int64_t *T, const double *sh)
  {
    // |T| < 2^20 per axis for any structure a cell list can hold: packed into one key.
    const uint64_t key = (uint64_t(T[0] + (1 << 20)) << 42) | (uint64_t(T[1] + (1 << 20)) << 21) |
                         uint64_t(T[2] + (1 << 20));
    auto it = image_of_.find(key);
    if (it != image_of_.end()) return it->second;
    const uint32_t row = uint32_t(image_of_.size());
    image_of_.emplace(key, row);
    shifts_->insert(shifts_->end(), {sh[0], sh[1], sh[2], 0.0});
    return row;
  }

  /* The neighbourhood of the centres in cell `cid` whose wrap is wrap_i.  An atom q of a visited cell
   * is seen through the image B = S - wrap_q + wrap_i (search basis), T = B op in the caller's cell,
   * its shift (T0 c0 + T1 c1) + T2 c2 the Python path's way: one per run of atoms of one wrap. */
  void build_hood(int64_t cid, const int64_t *wrap_i)
  {
    const Structure &s = s_;
    if (cid != visits_of_) plan_visits(cid);
    hood_cell_ = cid;
    std::copy(wrap_i, wrap_i + 3, hood_wrap_);
    Hood &h = hood_;
    size_t n = 0;
    for (const Visit &vis : visits_) n += cell_start_[vis.cell + 1] - cell_start_[vis.cell];
    for (auto *v : {&h.px, &h.py, &h.pz, &h.sx, &h.sy, &h.sz})
      if (v->size() < n) v->resize(n);
    if (h.j.size() < n) h.j.resize(n), h.home.resize(n);
    h.n = n;
    size_t e = 0;
    for (const Visit &vis : visits_)
      for (size_t r = cell_runs_[vis.cell]; r < cell_runs_[vis.cell + 1]; r++) {
        const size_t q0 = run_start_[r], q1 = run_start_[r + 1];
        const int64_t *w = &sw_[3 * q0];
        const int64_t B[3] = {vis.S[0] - w[0] + wrap_i[0], vis.S[1] - w[1] + wrap_i[1], vis.S[2] - w[2] + wrap_i[2]};
        int64_t T[3];
        for (int a = 0; a < 3; a++) T[a] = B[0] * s.op[a] + B[1] * s.op[3 + a] + B[2] * s.op[6 + a];
        double sh[3];
        for (int a = 0; a < 3; a++)
          sh[a] = (double(T[0]) * s.cell[a] + double(T[1]) * s.cell[3 + a]) + double(T[2]) * s.cell[6 + a];
        const bool home = (B[0] | B[1] | B[2]) == 0;
        const int64_t row = shifts_ ? int64_t(uint64_t(image_row(T, sh)) << records::IMAGE_SHIFT) : 0;
        // Short runs (a cell's atoms): plain loops, no library call per run.
        for (size_t q = q0; q < q1; q++, e++) {
          h.px[e] = cx_[q], h.py[e] = cy_[q], h.pz[e] = cz_[q];
          h.sx[e] = sh[0], h.sy[e] = sh[1], h.sz[e] = sh[2];
          h.j[e] = row | order_[q], h.home[e] = home ? order_[q] : -1;
        }
      }
  }

  /* Every image of every atom within the radius of the centre at sorted position k, into p_ (and how
   * many): its neighbourhood tested with r_ij = (x_j - x_i) + shift, the Python path's vectors, and the
   * decisive |r_ij|^2 < radius^2. */
  size_t pairs_of(size_t k)
  {
    const size_t i = size_t(order_[k]);
    const int64_t *wrap_i = &sw_[3 * k];
    if (cell_of_[i] != hood_cell_ || !std::equal(wrap_i, wrap_i + 3, hood_wrap_)) build_hood(cell_of_[i], wrap_i);
    const Hood &h = hood_;
    p_.room(h.n + records::SLACK);
    p_.n = records::images(h.n, h.px.data(), h.py.data(), h.pz.data(), h.sx.data(), h.sy.data(), h.sz.data(),
                           h.j.data(), h.home.data(), &s_.positions[3 * i], rc2_, int64_t(i), p_.j.data(),
                           p_.x.data(), p_.y.data(), p_.z.data());
    return p_.n;
  }

  /* The centre at sorted position k and its pairs within rcut, into the chunk. */
  void centre(size_t k, Core::Chunk &c)
  {
    const size_t i = size_t(order_[k]);
    if (pairs_of(k) > size_t(max_nb_)) too_many(m_, s_.types, i, p_.j.data(), p_.n, c);
    c.add_centre(int64_t(i), p_);
  }

};

/* The pairs of a PairCache: each centre's candidates tested and encoded in one pass (records::listed
 * with images), as an MD code's neighbour list is. */
class CachedSource : public Core::Source {
 public:
  CachedSource(const Structure &s, const Core::PairCache &pc, const HostModel &m, size_t chunk_atoms)
      : s_(s), pc_(pc), m_(m), rc2_(m.rcut * m.rcut), chunk_(chunk_atoms)
  {
  }

  bool next(Core::Chunk &c) override
  {
    const size_t n = s_.natoms;
    if (done_ >= n) return false;
    const size_t hi = std::min(n, done_ + chunk_);
    const double *x = s_.positions;
    for (size_t k = done_; k < hi; k++) {
      const int64_t i = pc_.order[k];
      const size_t k0 = pc_.start[k], n_cand = pc_.start[k + 1] - k0;
      uint64_t *out = c.slots(n_cand);
      const records::Found f = records::listed(i, pc_.image.data() + k0, n_cand, x, rc2_, c.enc->rc, out,
                                               c.nbr_slots(), pc_.shifts.data());
      if (f.kept > size_t(m_.sum_sel())) too_many(m_, s_.types, size_t(i), c.nbr_slots(), f.kept, c);
      if (!c.end_centre(i, f)) continue;
      // Something to name: the kept pairs' r_ij again, as the kernel computed them.
      p_.room(n_cand);
      p_.n = 0;
      for (size_t e = k0; e < k0 + n_cand; e++) {
        const int64_t j = pc_.image[e] & records::ATOM_MASK;
        const double *sh = &pc_.shifts[4 * (uint64_t(pc_.image[e]) >> records::IMAGE_SHIFT)];
        const double vx = (x[3 * j] - x[3 * i]) + sh[0], vy = (x[3 * j + 1] - x[3 * i + 1]) + sh[1],
                     vz = (x[3 * j + 2] - x[3 * i + 2]) + sh[2];
        if (!((vx * vx + vy * vy) + vz * vz < rc2_)) continue;
        p_.j[p_.n] = j, p_.x[p_.n] = vx, p_.y[p_.n] = vy, p_.z[p_.n] = vz;
        p_.n++;
      }
      c.note_last_centre(p_);
    }
    done_ = hi;
    return true;
  }

 private:
  const Structure &s_;
  const Core::PairCache &pc_;
  const HostModel &m_;
  double rc2_;
  size_t chunk_, done_ = 0;
  Pairs p_;
};

/* Whether pc's search was of s's atoms, cell and periodicity, to the same rcut + skin. */
bool same_search(const Core::PairCache &pc, const Structure &s, double rcut, double skin)
{
  return pc.natoms == s.natoms && pc.rcut == rcut && pc.skin == skin && std::equal(pc.cell, pc.cell + 9, s.cell) &&
         std::equal(pc.pbc, pc.pbc + 3, s.pbc);
}

/* Whether pc holds every pair within rcut of s: the same search, and no atom farther than skin/2 from
 * where it was then (less a margin for the rounding of r_ij). */
bool still_holds(const Core::PairCache &pc, const Structure &s, double rcut, double skin)
{
  if (!pc.valid || !same_search(pc, s, rcut, skin)) return false;
  const double half = 0.5 * skin - 1e-9, h2 = half * half;
  bool moved = false;
  for (size_t a = 0; a < s.natoms; a++) {
    const double dx = s.positions[3 * a] - pc.x0[3 * a], dy = s.positions[3 * a + 1] - pc.x0[3 * a + 1];
    const double dz = s.positions[3 * a + 2] - pc.x0[3 * a + 2];
    moved |= !((dx * dx + dy * dy) + dz * dz < h2);  // a NaN moved too
  }
  return !moved;
}

}  // namespace

void Core::compute_periodic(const Structure &s, Result &r)
{
  check_types(s.types, s.natoms);
  types_ = s.types;
  if (opt_.skin > 0) {
    if (!buf_.pairs) buf_.pairs = std::make_unique<PairCache>();
    PairCache &pc = *buf_.pairs;
    int how = 2;
    double t_search = 0;
    if (!still_holds(pc, s, m_.rcut, opt_.skin) && !(pc.too_big && same_search(pc, s, m_.rcut, opt_.skin))) {
      const double t0 = seconds();
      how = 1;
      CellSource search(s, m_, opt_.chunk_atoms, m_.rcut + opt_.skin);
      // A centre with far more pairs than sel allows is refused below by the direct search.
      const bool kept = search.collect(pc, 4 * size_t(m_.sum_sel()) + 64, opt_.pair_list_bytes / sizeof(int64_t));
      pc.natoms = s.natoms, pc.rcut = m_.rcut, pc.skin = opt_.skin, pc.too_big = !kept;
      std::copy(s.cell, s.cell + 9, pc.cell);
      std::copy(s.pbc, s.pbc + 3, pc.pbc);
      if (kept) pc.x0.assign(s.positions, s.positions + 3 * s.natoms);
      else pc.image = {}, pc.order = {}, pc.start = {}, pc.x0 = {};  // the memory back
      t_search = seconds() - t0;
    }
    if (pc.valid) {
      CachedSource src(s, pc, m_, opt_.chunk_atoms);
      run(src, s.natoms, s.natoms, nullptr, r);
      r.pair_list = how;
      r.timings.neighbors_encode += t_search;
      r.timings.total += t_search;
      return;
    }
  }
  CellSource src(s, m_, opt_.chunk_atoms, m_.rcut);
  run(src, s.natoms, s.natoms, nullptr, r);
  r.pair_list = 3;
}

}  // namespace dpfpga
