/* pair_style nvnmd: the dpfpga quantized DeePMD-style model, evaluated by a dpfpga device service.
 *
 *   pair_style nvnmd MODEL.npz [device NAME] [socket PATH] [timeout SECONDS] [python EXE] [chunk N]
 *                              [below_rmin error|allow]
 *   pair_coeff * * Ge Te
 *
 * A pair closer than the model's r_min (where its tables start) ends the run with an ERROR naming both
 * atoms, unless `below_rmin allow`: then the tables are held constant below r_min (forces stay the
 * energy's gradient), LAMMPS warns the first time, and the count is reported at the end.  The usual use:
 * `pair_style hybrid/overlay nvnmd M.npz below_rmin allow zbl 1.2 1.8` (ZBL's screened repulsion).
 *
 * Each MPI rank sends its local and ghost atoms and its full neighbour list to the service (one per
 * node; started privately unless `socket` names a running one) and adds back the energy, the forces on
 * local *and* ghost atoms (newton on: LAMMPS sums a ghost's share into its owner) and the virial.
 * The numbers are the fixed-point results of the NumPy reference / the hardware, exact in double. */
#ifdef PAIR_CLASS
// clang-format off
PairStyle(nvnmd,PairNVNMD);
// clang-format on
#else

#ifndef LMP_PAIR_NVNMD_H
#define LMP_PAIR_NVNMD_H

#include "pair.h"
#include "service_client.h"

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
  std::string model_file_, device_ = "reference", socket_, python_;
  double timeout_ = 600.0;
  int chunk_atoms_ = 4096;
  bool allow_below_rmin_ = false;
  long below_rmin_records_ = 0, below_rmin_steps_ = 0;  // all ranks', over the run
  std::unique_ptr<dpfpga::PrivateService> service_;  // on the first rank of each node, if private
  std::unique_ptr<dpfpga::ServiceClient> client_;
  dpfpga::Welcome welcome_;
  std::vector<int> type_to_model_;  // LAMMPS type (1-based) -> model type
  dpfpga::Domain domain_;
  dpfpga::Reply reply_;
  double t_pack_ = 0.0, t_unpack_ = 0.0, service_time_[4] = {0, 0, 0, 0};
  long steps_ = 0;

  void allocate();
  void connect();
  void report();
  [[noreturn]] void service_error(const std::string &what, const std::exception &e);
};

}  // namespace LAMMPS_NS

#endif
#endif
