/* Inside the core (not an interface): a chunk's records, and where chunks come from. */
#ifndef DPFPGA_CHUNK_H
#define DPFPGA_CHUNK_H

#include "dpfpga/core.h"

namespace dpfpga {

/* A chunk's centre atoms and their records (grouped by centre, in the source's order), then what the
 * host made of them: quantized displacements and the wire words. */
struct Core::Chunk {
  std::vector<int64_t> centres;  // global atom indices
  std::vector<size_t> start;     // records of centre c: start[c] .. start[c+1]-1
  std::vector<int32_t> rtype;    // neighbour type
  std::vector<int64_t> nbr;      // neighbour's global index
  std::vector<double> vec;       // r_ij, 3 per record (Å)
  std::vector<int32_t> d;        // r_ij in the coord format, 3 per record

  void clear()
  {
    centres.clear();
    start.assign(1, 0);
    rtype.clear();
    nbr.clear();
    vec.clear();
    d.clear();
  }
  size_t size() const { return centres.size(); }
  size_t records() const { return rtype.size(); }
  void add(int32_t type, int64_t j, double x, double y, double z)
  {
    rtype.push_back(type);
    nbr.push_back(j);
    vec.push_back(x);
    vec.push_back(y);
    vec.push_back(z);
  }
  /* Room for `records` more records (a source that knows a bound asks once, not per record). */
  void reserve(size_t records)
  {
    rtype.reserve(rtype.size() + records);
    nbr.reserve(nbr.size() + records);
    vec.reserve(vec.size() + 3 * records);
  }
  /* Close the records of the centre just added. */
  void end_centre() { start.push_back(rtype.size()); }
};

/* Where chunks come from: an MD code's neighbour list (below) or the cell list (cells.cpp). */
class Core::Source {
 public:
  virtual ~Source() = default;
  /* Fill `c` with the next chunk (at most chunk_atoms centres); false when none is left. */
  virtual bool next(Chunk &c) = 0;
};

}  // namespace dpfpga

#endif
