/* Inside the core (not an interface): a chunk of centre atoms, made into wire words as its records are
 * found, and where chunks come from.
 *
 * One pass per record: a source (a neighbour list, core.cpp; the cell list, cells.cpp) finds a centre's
 * pairs inside rcut and a kernel (records.h) quantizes them, tests r_min and writes their input words
 * in place, keeping what the fold needs (the record word, from which it reads r_ij back, and the
 * neighbour's index); the chunk adds the header beat and counts the records by type for sel.
 * Whatever is wrong (more than sel, a component outside the coord format, a pair below r_min) is
 * noted, not thrown: Core::check throws for the whole chunk in the Python path's order (sel, range,
 * r_min) once the chunk is complete. */
#ifndef DPFPGA_CHUNK_H
#define DPFPGA_CHUNK_H

#include "dpfpga/core.h"
#include "records.h"

#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

namespace dpfpga {

/* Seconds on a steady clock: the timings of Result::timings. */
inline double seconds()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* What a chunk's centres need of the model and the evaluation. */
struct Encoding {
  records::Consts rc;           // the kernels' (records.h)
  int ntypes = 0;
  const int *sel = nullptr;
  size_t min_sel = 0;           // the smallest of sel
  size_t lanes = 1;
  bool keep_records = true;     // keep each record's word for the fold (the virial needs r_ij)
  bool locate_close = true;     // name the closest pair below r_min (refused); else only count them (allowed)
};

/* One centre's pairs inside rcut, structure of arrays: neighbour index and r_ij (Å). */
struct Pairs {
  std::vector<int64_t> j;
  std::vector<double> x, y, z;
  size_t n = 0;
  /* Room for `m` pairs. */
  void room(size_t m)
  {
    if (j.size() < m) j.resize(m), x.resize(m), y.resize(m), z.resize(m);
  }
};

struct Core::Chunk {
  std::vector<int64_t> centres;  // global atom indices
  std::vector<size_t> start;     // records of centre a: start[a] .. start[a+1]-1 of nbr (and rec)
  /* The buffers below only grow (an MD code's chunks are alike): their first records() / n_words
   * entries are this chunk's, and what lies beyond is not cleared, so that no page is zero-filled
   * twice.  seal() trims `words` to its content before it goes to the device. */
  std::vector<uint64_t> rec;     // each record's input word, for the virial (Encoding::keep_records)
  std::vector<int64_t> nbr;      // each record's neighbour (global index)
  std::vector<uint64_t> words;   // the device's input: a header beat, then record beats, per centre
  size_t n_words = 0;
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
    n_words = 0;
    problems = Problems{};
  }
  size_t size() const { return centres.size(); }
  size_t records() const { return start.back(); }
  void seal() { words.resize(n_words); }

  /* The next centre, written in place by a kernel (records.h), in three steps: slots(n) makes room for
   * at most n records and says where their words go (nbr_slots(): their neighbours); end_centre(i, f)
   * adds the header beat and the padding and notes the checks; when it returns true, the records must
   * be looked at again, from their r_ij, through note_last_centre. */
  uint64_t *slots(size_t n);
  int64_t *nbr_slots() { return nbr.data() + records(); }
  bool end_centre(int64_t i, const records::Found &f);
  void note_last_centre(const Pairs &p);

  /* Centre `i` (global index) and its pairs p, all three steps. */
  void add_centre(int64_t i, const Pairs &p);
};

/* A structure's pairs within rcut + skin (cells.cpp), kept between evaluations while no atom has moved
 * skin/2 from x0: every pair then within rcut is among them.  Centres in the cell list's order, each
 * pair an atom and an image whose shift (caller's cell) is a row of `shifts`: 8 bytes a pair. */
struct Core::PairCache {
  bool valid = false;
  bool too_big = false;          // the last search (same_search) went past Options::pair_list_bytes or a
                                 // centre's bound on pairs: not tried again for that box
  size_t natoms = 0;
  double cell[9] = {}, rcut = 0, skin = 0;
  bool pbc[3] = {false, false, false};
  std::vector<double> x0;        // positions at the search
  std::vector<int64_t> order;    // centres
  std::vector<size_t> start;     // pairs of centre order[k]: start[k] .. start[k + 1] - 1
  std::vector<int64_t> image;    // the pair's atom and its image's row of shifts (records::IMAGE_SHIFT)
  std::vector<double> shifts;    // 4 per row: x, y, z (Å), 0
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
