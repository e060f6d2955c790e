/* pair_style nvnmd: the dpfpga quantized DeePMD-style model, evaluated on a dpfpga device.
 *
 *   pair_style nvnmd MODEL.npz [device NAME] [host native|service] [socket PATH] [timeout SECONDS]
 *                              [python EXE] [chunk N] [lanes N] [below_rmin error|allow]
 *   pair_coeff * * Ge Te
 *
 * Devices (NAME):
 *   reference          the bit-exact NumPy reference (the default); runs in the service
 *   zero               answers zeros: everything but the pipeline's arithmetic (benchmarks)
 *   xdma[:P[,P2...]]   a card through the XDMA driver's character devices under prefix P (/dev/xdma0)
 *   rtl                the model's generated RTL in the standalone Verilator harness (first use compiles it)
 *
 * Two hosts do the per-atom work (neighbour records, checks, quantization, wire encoding, the exact fold),
 * giving the same bits (tests/host/test_lammps_native.py compares them with ==):
 *
 *   host native   (the default for zero, xdma, rtl) the native core (host/native/, compiled into this
 *                 plugin from the same sources and flags as the Python extension) runs in each rank's
 *                 own process: no socket, no Python on the data path.  At pair_style time rank 0 runs
 *                 `PYTHON -m host native-model MODEL` once (with `--rtl-harness --lanes N` for rtl, which
 *                 builds the harness); its text, the model constants, is broadcast to every rank.  Each
 *                 rank then opens its own device instance: zero and rtl (one harness process per rank)
 *                 are private; with xdma the ranks of a node that share a card take turns, one evaluation
 *                 at a time, and with several prefixes (cards) rank r of a node (its rank within
 *                 MPI_COMM_TYPE_SHARED) drives card r % cards, as DeePMD-kit and Kokkos assign GPUs.
 *   host service  (always for reference and `socket`) one `PYTHON -m host serve` per node (started
 *                 privately unless `socket` names a running one) does that work for the node's ranks
 *                 over a Unix socket (service_client.h).  `host service` forces it for any device.
 *
 * A pair closer than the model's r_min (where its tables start) ends the run with an ERROR naming both
 * atoms, unless `below_rmin allow`: then the tables are held constant below r_min (forces stay the
 * energy's gradient), LAMMPS warns the first time, and the count is reported at the end.  The usual use:
 * `pair_style hybrid/overlay nvnmd M.npz below_rmin allow zbl 1.2 1.8` (ZBL's screened repulsion).
 * Every failure (too many neighbours, an element outside the model, a device error or timeout) ends the
 * run with an ERROR line worded the same on both hosts.
 *
 * Each rank evaluates its local atoms with their ghosts and its full neighbour list and adds back the
 * energy, the forces on local *and* ghost atoms (newton on: LAMMPS sums a ghost's share into its owner)
 * and the virial.  The numbers are the fixed-point results of the device, converted once, exact in
 * double.  `timeout` bounds each device chunk and a card's reset (native) or each service reply;
 * `chunk` is the centre atoms per device chunk; `lanes` the words per beat of zero and rtl (a card
 * reports its own).
 *
 * At the end of a run rank 0 prints where an evaluation's time went (benchmarks/lammps_loop.py reads it):
 *   native:  neighbours (LAMMPS's list into the core's Domain: taken over when LAMMPS rebuilt it, else
 *            reused), encode, device (waiting for it), fold (the core's split), unpack (the integers into
 *            LAMMPS's arrays), total (the whole compute()); how often the list was taken over and reused
 *   service: pack, send, wait, receive, unpack here; encode, device, assemble, total in the service. */
#ifdef PAIR_CLASS
// clang-format off
PairStyle(nvnmd,PairNVNMD);
// clang-format on
#else

#ifndef LMP_PAIR_NVNMD_H
#define LMP_PAIR_NVNMD_H

#include "pair.h"
#include "service_client.h"

#include "dpfpga/core.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairNVNMD : public Pair {
 public:
  PairNVNMD(class LAMMPS *);
  ~PairNVNMD() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  enum class Host { Native, Service };

  // pair_style arguments
  std::string model_file_, device_name_ = "reference", socket_, python_;
  Host host_ = Host::Service;
  double timeout_ = 600.0;
  int chunk_atoms_ = 4096, lanes_ = 1;
  int threads_ = 0;  // device cpu: threads (0: the cores this rank may run on)
  bool allow_below_rmin_ = false;

  // the model, as either host describes it
  std::vector<std::string> type_map_;
  std::vector<int> sel_;
  double rcut_ = 0.0;
  std::vector<int> type_to_model_;  // LAMMPS type (1-based) -> model type

  // host service
  std::unique_ptr<dpfpga::PrivateService> service_;  // on the first rank of each node, if private
  std::unique_ptr<dpfpga::ServiceClient> client_;
  dpfpga::StructureRequest request_;
  dpfpga::Reply reply_;

  // host native.  Declared in this order so that the core goes first, then the device it drives, then
  // the model both refer to.  Each step sets what LAMMPS asks of it (global and per-atom virial).
  std::unique_ptr<dpfpga::HostModel> model_;
  std::unique_ptr<dpfpga::Device> device_;
  std::unique_ptr<dpfpga::Core> core_;
  dpfpga::Result result_;
  std::vector<int32_t> model_types_;                  // nall
  std::vector<int64_t> ids_, numneigh_;               // nall; nlocal
  std::vector<int32_t> neighbors_;                    // CSR, LAMMPS's own ints (reused between steps)
  std::vector<int32_t> staging_;                      // neighbours in ilist order, when that is not 0, 1, ...
  int csr_shape_[3] = {-1, -1, -1};                   // nlocal, nall, inum of the list the CSR was made of
  long csr_reused_ = 0;                               // evaluations that reused it (no reneighbouring)

  // bookkeeping
  long below_rmin_records_ = 0, below_rmin_steps_ = 0;  // all ranks', over the run
  long steps_ = 0;
  double t_pack_ = 0.0, t_unpack_ = 0.0, t_pair_ = 0.0;
  double service_time_[4] = {0, 0, 0, 0};  // the service's or the core's: encode, device, fold, total

  void allocate();
  void release();
  void connect();
  void start_native();
  void compute_service();
  void compute_native();
  dpfpga::Core &core_for(bool virial, bool atomic_virial);
  void build_domain(dpfpga::Domain &d);
  void count_below_rmin(uint64_t records);
  void report();
  [[noreturn]] void service_error(const std::string &what, const std::exception &e);
  [[noreturn]] void native_error(const std::string &what, const std::exception &e, bool evaluating);
};

}  // namespace LAMMPS_NS

#endif
#endif
