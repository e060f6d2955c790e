/* The native host core: the per-atom host work of host/evaluate.py in C++, bit for bit.
 *
 *   HostModel m = HostModel::parse(text);        // `python -m host native-model M.npz` (host/native.py)
 *   auto dev = open_device("zero", m, {});       // or xdma:PREFIX, rtl:HARNESS (devices.h)
 *   Core core(m, *dev, options);
 *   Result r;
 *   core.compute_neighbors(domain, r);           // an MD code's local + ghost atoms, full neighbour list
 *   core.compute_periodic(structure, r);         // positions and cell (the ASE calculator)
 *
 * What it does, chunk by chunk (options.chunk_atoms centres): r_ij = x_j - x_i, pairs with
 * |r_ij|^2 < rcut^2 kept, neighbours counted per type against sel, each component quantized to the
 * coord format (floor(v * 2^frac + 0.5)), the closest pair below r_min found, the wire words encoded
 * (dpfpga/wire.h), up to device.depth() chunks kept in flight, the results decoded (tags and framing
 * checked) and folded in exact integers:
 *
 *   E    = sum_i (e_i + bias[type_i])                 format E (int64)
 *   F_i  = sum_j dE/dr_ij - sum_j dE/dr_ji            format F (int64)
 *   W    = - sum_ij r_ij (x) dE/dr_ij                 frac(coord) + frac(F) (__int128)
 *   W_i  = - 1/2 sum_j r_ij (x) dE/dr_ij, half to each atom of a pair: kept as the integer sum
 *          S_i = sum over the pairs that touch i of r_ij (x) dE/dr_ij (int64), W_i = -S_i / 2 * 2^-(frac)
 *
 * so the result depends neither on the chunking nor on the order of records: it equals the Python
 * path (host/evaluate.py, the readable specification) integer for integer.  Floating point is used
 * only where the Python path uses it, in the same order of operations, and the core is compiled with
 * -ffp-contract=off so that no multiply-add is fused: r_ij = (x_j - x_i) + ((S0*c0 + S1*c1) + S2*c2),
 * |r|^2 = (x*x + y*y) + z*z, q = floor(v * 2^frac + 0.5).
 *
 * Errors are `Error`s whose kind names the Python exception they stand for (host/native.py raises
 * that class) and whose text is the Python path's, naming the atom. */
#ifndef DPFPGA_CORE_H
#define DPFPGA_CORE_H

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dpfpga {

struct PipelineConstants;  // the fixed-point pipeline's constants, for the cpu device (pipeline.h)

/* The Python exception each error stands for (model.neighbors / model.assembly / host.devices). */
enum class ErrorKind {
  Structure,         // model.neighbors.StructureError
  NeighborOverflow,  // model.neighbors.NeighborOverflowError (more neighbours than sel)
  InputRange,        // model.assembly.InputRangeError (a displacement outside the coord format)
  CloseContact,      // model.assembly.CloseContactError (a pair below r_min)
  DeviceFlag,        // model.assembly.DeviceFlagError (flagged atoms, results out of order)
  Type,              // KeyError (a type outside the model's type map)
  Device,            // host.devices.DeviceError (the device failed or broke the stream)
  DeviceTimeout,     // host.devices.DeviceTimeout
  Model,             // contract.modelfile.ModelFileError (a model text the core cannot read)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string &what) : std::runtime_error(what), kind(kind) {}
  ErrorKind kind;
};

/* What the host needs of a model file: written by host/native.py (`host_model_text`), one
 * `key value...` line each; floats as Python's repr, so they are read back exactly. */
struct HostModel {
  std::string hash;                    // content hash (64 hex digits): what a card must run
  int ntypes = 0;
  std::vector<std::string> type_map;   // element of each model type
  std::vector<int> sel;                // neighbours per type the hardware holds
  double rcut = 0.0;                   // Å
  int coord_frac = 0;                  // displacement format: fraction bits, range, text
  int64_t coord_lo = 0, coord_hi = 0;
  double coord_max_value = 0.0;        // Å (coord_hi * 2^-frac)
  std::string coord_describe;          // e.g. "s18.13"
  int64_t table_x_min = 0;             // u = |d|^2 (coord format squared) where the tables start
  double r_min = 0.0;                  // Å
  double training_min_distance = 0.0;  // Å, 0 when the model file does not record it
  int energy_frac = 0, force_frac = 0;
  std::vector<int64_t> energy_bias;    // per type, format E
  /* The text's `pipeline_*` lines (host_model_text(qm, pipeline=True)): what the cpu device computes
   * with; null when the text has none (every other device needs none). */
  std::shared_ptr<PipelineConstants> pipeline;

  static HostModel parse(const std::string &text);
  int sum_sel() const;
  std::string type_map_text() const;   // "['Ge', 'Te']", as Python prints the list
};

/* A device in the wire format (host/devices/base.py): chunks of whole atoms in, the same chunks'
 * output words out, in the order submitted.  A beat is lanes() words. */
class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  virtual int lanes() const = 0;
  /* Chunks a host may keep in flight (it encodes chunk k+1 while the device works on chunk k). */
  virtual int depth() const { return 2; }
  /* Queue one chunk of `n_atoms` atoms: beats * lanes() words.  Does not wait for the device. */
  virtual void submit(std::vector<uint64_t> words, size_t n_atoms) = 0;
  /* The output words of the oldest chunk not yet collected; Error(DeviceTimeout) when it is not
   * complete within `timeout` seconds, Error(Device) when the device fails. */
  virtual std::vector<uint64_t> collect(double timeout) = 0;
  virtual std::string describe() const { return name() + " (lanes " + std::to_string(lanes()) + ")"; }
  /* Around one evaluation (Core calls begin() before its first chunk and end() after its last
   * collect, also when it fails): a device shared by several processes (a card) is held in between. */
  virtual void begin() {}
  virtual void end() {}
};

struct Options {
  size_t chunk_atoms = 4096;      // centre atoms per chunk (memory and pipelining granularity)
  bool strict = true;             // flagged atoms (saturation, ...) are an Error(DeviceFlag)
  bool allow_below_rmin = false;  // else a pair below r_min is an Error(CloseContact)
  bool virial = true;             // fill Result::virial (an MD step that needs no pressure skips the pair sum)
  bool atomic_virial = false;     // fill Result::s_atom
  double timeout = 600.0;         // s, per chunk
  /* Å.  compute_periodic searches pairs this far beyond rcut and keeps them for the evaluations to come
   * while no atom has moved skin/2 from where it was then (an MD run through ASE: a search every few
   * dozen steps, not every step); every pair within rcut is among them, and the test on r_ij decides
   * as before: the same bits.  0: a search every evaluation. */
  double skin = 1.0;
  /* The kept pairs' memory (8 bytes a pair: ~0.7 kB per atom of GeTe at skin 1 Å) at most; a structure
   * that needs more is searched every evaluation (bounded memory, as the Python path). */
  size_t pair_list_bytes = size_t(256) << 20;
  /* Called after each chunk's fold with the number of its centres (a progress bar); may be empty. */
  std::function<void(size_t)> on_chunk;
};

/* An MD code's domain: local atoms 0..nlocal-1, then ghosts; the local atoms' full neighbour
 * list in CSR form (any order, possibly with pairs beyond rcut: a skin).  Arrays are borrowed. */
struct Domain {
  size_t nall = 0, nlocal = 0;
  const double *x = nullptr;          // nall * 3, Å
  const int32_t *types = nullptr;     // nall, model types
  const int64_t *numneigh = nullptr;  // nlocal
  const int64_t *neighbors = nullptr; // sum(numneigh), indices into x
  const int32_t *neighbors32 = nullptr;  // or these (an MD code's own int indices: half the bytes to read)
  const int64_t *ids = nullptr;       // nall names for messages (LAMMPS atom ids); null: the index
  /* numneigh and neighbors hold what they held at this Core's previous compute_neighbors (an MD code
   * between two list builds): the core checked every entry then and does not again. */
  bool list_unchanged = false;
};

/* A structure with a lattice (ASE): positions, the caller's cell and periodicity, and the basis the
 * search runs in (model.neighbors.search_basis: the cell, or a compact basis of the same lattice with
 * op mapping its shifts to the caller's: S_cell = S_basis @ op).  Arrays are borrowed. */
struct Structure {
  size_t natoms = 0;
  const double *positions = nullptr;  // natoms * 3, Å
  const int32_t *types = nullptr;     // natoms
  double cell[9] = {};                // rows are the cell vectors (Å); the caller's
  double basis[9] = {};               // rows: the search basis
  int64_t op[9] = {};                 // integer, S_cell = S_basis @ op
  double origin[3] = {};              // subtracted before fractional coordinates (open clusters)
  bool pbc[3] = {false, false, false};
};

struct Timings {
  double neighbors_encode = 0, device_wait = 0, assemble = 0, total = 0;  // s
};

/* Exact integer results (and counts).  Converted to floats by the caller: E * 2^-energy_frac,
 * F * 2^-force_frac, W * 2^-(coord_frac + force_frac), W_i = -S_i * 2^-(coord_frac + force_frac + 1). */
struct Result {
  int64_t energy = 0;                  // sum over centres, bias included
  std::vector<int64_t> forces;         // natoms * 3 (ghosts included)
  __int128 virial[9] = {};             // row-major 3x3
  std::vector<int64_t> e_atom;         // ncentres, bias included
  std::vector<int64_t> flags;          // ncentres
  std::vector<int64_t> s_atom;         // natoms * 9 (Options::atomic_virial)
  uint64_t below_rmin = 0;             // records below r_min evaluated (allow_below_rmin)
  int pair_list = 0;                   // compute_periodic: 1 pair list built, 2 reused, 3 searched afresh
  Timings timings;
};

class Core {
 public:
  Core(const HostModel &model, Device &device, const Options &options);
  ~Core();  // defined where Chunk is complete
  Core(const Core &) = delete;
  Core &operator=(const Core &) = delete;
  void compute_neighbors(const Domain &domain, Result &result);
  void compute_periodic(const Structure &structure, Result &result);
  /* The options of the evaluations to come (an MD code asks for the virial on some steps only). */
  Options &options() { return opt_; }

  struct Chunk;      // a chunk's centres and records (core.cpp)
  struct PairCache;  // a structure's pairs within rcut + skin, kept between evaluations (cells.cpp)
  class Source;   // where chunks come from: a neighbour list (core.cpp) or the cell list (cells.cpp)

  /* The memory a Core's evaluations grow into (chunks, device words, forces), kept between them.  A
   * caller that makes a Core per evaluation (the Python binding) hands it from one to the next, so that
   * an evaluation does not fault in and zero fresh pages. */
  struct Buffers {
    std::vector<Chunk> pool;      // chunks in flight and their records
    std::vector<uint64_t> spare;  // a words buffer
    std::vector<int64_t> forces;  // the fold's forces, stride_ per atom (the record kernels' layout)
    std::unique_ptr<PairCache> pairs;  // Options::skin
    Buffers();
    ~Buffers();
    Buffers(Buffers &&) noexcept;
    Buffers &operator=(Buffers &&) noexcept;
  };
  /* A Core that takes over an earlier one's buffers (release()). */
  Core(const HostModel &model, Device &device, const Options &options, Buffers &&buffers);
  Buffers release() { return std::move(buf_); }

 private:
  const HostModel &m_;
  Device &dev_;
  Options opt_;
  const int32_t *types_ = nullptr;  // of the evaluation under way
  Buffers buf_;
  size_t stride_ = 3;
  bool list_checked_ = false;       // the previous compute_neighbors checked its list (Domain::list_unchanged)
  size_t list_nall_ = 0;

  void check_types(const int32_t *types, size_t n);
  void check(const Chunk &c, const int64_t *ids, Result &r) const;
  void fold(const Chunk &c, const std::vector<uint64_t> &out, Result &r);
  void run(Source &src, size_t ncentres, size_t natoms, const int64_t *ids, Result &r);
};

}  // namespace dpfpga

#endif
