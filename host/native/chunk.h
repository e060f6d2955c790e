/* Inside the core (not an interface): a chunk of centre atoms, made into wire words as its records are
 * found, and where chunks come from.
 *
 * One pass per record: a source (a neighbour list, core.cpp; the cell list, cells.cpp) finds a centre's
 * pairs inside rcut and hands them to Chunk::add_centre, which counts them by type, quantizes, tests
 * r_min and writes the input words, keeping what the fold needs (the record word, from which it reads
 * r_ij back, and the neighbour's index).  Whatever is wrong (more than sel, a component outside the
 * coord format, a pair below r_min) is noted, not thrown: Core::check throws for the whole chunk in the
 * Python path's order (sel, range, r_min) once the chunk is complete. */
#ifndef DPFPGA_CHUNK_H
#define DPFPGA_CHUNK_H

#include "dpfpga/core.h"

#include <cstdint>
#include <limits>
#include <vector>

namespace dpfpga {

/* What add_centre needs of the model and the evaluation. */
struct Encoding {
  double scale = 1.0;           // 2^coord_frac
  double lo = 0.0, hi = 0.0;    // floor(v * scale + 0.5) in [lo, hi) <=> inside the coord format
  int64_t x_min = 0;            // u = |d|^2 below this: below r_min (the s table's first input)
  int ntypes = 0;
  const int *sel = nullptr;
  size_t lanes = 1;
  const int32_t *types = nullptr;  // every atom's model type
  bool keep_records = true;        // keep each record's word for the fold (the virial needs r_ij)
};

/* One centre's pairs inside rcut, structure of arrays: neighbour index and r_ij (Å). */
struct Pairs {
  std::vector<int64_t> j;
  std::vector<double> x, y, z;
  size_t n = 0;
  /* Room for `m` pairs (the candidates' count: a source writes each and keeps those inside). */
  void room(size_t m)
  {
    if (j.size() < m) j.resize(m), x.resize(m), y.resize(m), z.resize(m);
  }
};

struct Core::Chunk {
  std::vector<int64_t> centres;  // global atom indices
  std::vector<size_t> start;     // records of centre a: start[a] .. start[a+1]-1 of nbr (and rec)
  std::vector<uint64_t> rec;     // each record's input word, for the virial (Encoding::keep_records)
  std::vector<int64_t> nbr;      // each record's neighbour (global index)
  std::vector<uint64_t> words;   // the device's input: a header beat, then record beats, per centre
  const Encoding *enc = nullptr;

  /* What is wrong with the chunk: the first of each kind, in the order the Python path finds them. */
  struct Problems {
    size_t sel_atoms = 0, sel_centre = 0, sel_type = 0;  // centres above sel; the first, its lowest such type
    int sel_count = 0;
    size_t range_records = 0, range_record = 0;  // records with a component outside the coord format
    double range_value = 0;                      // the first such component (Å)
    size_t close_records = 0, close_atoms = 0, close_record = 0;  // records below r_min; the closest
    double close_r = std::numeric_limits<double>::infinity();
  } problems;

  void clear()
  {
    centres.clear();
    start.assign(1, 0);
    rec.clear();
    nbr.clear();
    words.clear();
    problems = Problems{};
  }
  size_t size() const { return centres.size(); }
  size_t records() const { return nbr.size(); }

  /* Centre `i` (global index) and its pairs p: its header beat and record beats, its checks noted. */
  void add_centre(int64_t i, const Pairs &p);

 private:
  std::vector<int32_t> type_;  // one centre's neighbours' types
  void note_range_and_close(const Pairs &p, size_t base);
};

/* Where chunks come from: an MD code's neighbour list (core.cpp) or the cell list (cells.cpp). */
class Core::Source {
 public:
  virtual ~Source() = default;
  /* Fill `c` (cleared, its encoding set) with the next chunk (at most chunk_atoms centres) through
   * add_centre; false when none is left. */
  virtual bool next(Chunk &c) = 0;
};

}  // namespace dpfpga

#endif
