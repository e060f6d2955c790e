/* pair_style nvnmd: see pair_nvnmd.h.  LAMMPS-side bookkeeping only; the protocol is service_client.cpp
 * and every number comes from the dpfpga service (host/service.py, Evaluator.compute_neighbors). */
#include "pair_nvnmd.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mpi.h>

using namespace LAMMPS_NS;

namespace {

double now()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* Pairs are pre-selected here a hair beyond the model's cutoff, only to send less; the service makes
 * the decisive |r|^2 < rcut^2 test on the same vectors as the ASE path (host/neighbors.py). */
constexpr double PRESELECT_MARGIN = 1e-6;  // Å
/* How long the private service may take to start (imports, opening the device, compiling an rtl model). */
constexpr double STARTUP_TIMEOUT = 1800.0;  // s

const char *USAGE = "pair_style nvnmd MODEL [device NAME] [socket PATH] [timeout SECONDS] [python EXE] [chunk N] "
                    "[below_rmin error|allow]";

}  // namespace

PairNVNMD::PairNVNMD(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // The service returns the exact virial (sum over pairs); LAMMPS must not add its own F.r sum.
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairNVNMD::~PairNVNMD()
{
  report();
  client_.reset();   // BYE before the service goes
  service_.reset();  // stops the private service (SIGTERM) and removes its directory
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairNVNMD::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairNVNMD::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "Illegal pair_style nvnmd command: {}", USAGE);
  // pair_style issued again with this style: start over.
  report();
  client_.reset();
  service_.reset();
  steps_ = 0;
  device_ = "reference";
  socket_.clear();
  timeout_ = 600.0;
  chunk_atoms_ = 4096;
  allow_below_rmin_ = false;
  below_rmin_records_ = below_rmin_steps_ = 0;
  const char *env_python = std::getenv("DPFPGA_PYTHON");
  python_ = (env_python && *env_python) ? env_python : "python3";

  char resolved[PATH_MAX];
  if (!realpath(arg[0], resolved))
    error->all(FLERR, "pair nvnmd: cannot read model file {}: {}", arg[0], std::strerror(errno));
  model_file_ = resolved;
  bool device_given = false, python_given = false;
  for (int k = 1; k < narg; k += 2) {
    std::string key = arg[k];
    if (k + 1 >= narg) error->all(FLERR, "pair nvnmd: keyword {} needs a value; usage: {}", key, USAGE);
    std::string value = arg[k + 1];
    if (key == "device") {
      device_ = value;
      device_given = true;
    } else if (key == "socket") {
      socket_ = value;
    } else if (key == "timeout") {
      timeout_ = utils::numeric(FLERR, value, false, lmp);
      if (!(timeout_ > 0)) error->all(FLERR, "pair nvnmd: timeout must be > 0 seconds, got {}", value);
    } else if (key == "python") {
      python_ = value;
      python_given = true;
    } else if (key == "below_rmin") {
      if (value != "error" && value != "allow")
        error->all(FLERR, "pair nvnmd: below_rmin must be `error` or `allow`, got {}", value);
      allow_below_rmin_ = value == "allow";
    } else if (key == "chunk") {
      chunk_atoms_ = utils::inumeric(FLERR, value, false, lmp);
      if (chunk_atoms_ < 1) error->all(FLERR, "pair nvnmd: chunk must be >= 1 atom, got {}", value);
    } else {
      error->all(FLERR, "pair nvnmd: unknown keyword {}; usage: {}", key, USAGE);
    }
  }
  if (!socket_.empty() && (device_given || python_given))
    error->all(FLERR, "pair nvnmd: `socket` connects to a running service, which has its own device and "
                      "Python; drop `device`/`python` or drop `socket`");
  connect();
}

/* One service per node (shared by the node's ranks: a card is opened by one process), then one
 * connection per rank.  Errors end the run on the rank that meets them (error->one aborts all). */
void PairNVNMD::connect()
{
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int node_rank, node_size;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_size(node, &node_size);
  std::string path = socket_;
  if (socket_.empty()) {
    std::vector<char> buf(4096, '\0');
    if (node_rank == 0) {
      try {
        // Every rank of this node connects, however many cores it has; + 1: the connection that probed
        // the service's start may not be counted out yet when the ranks connect.
        service_ = std::make_unique<dpfpga::PrivateService>(python_, model_file_, device_, chunk_atoms_,
                                                            node_size + 1, STARTUP_TIMEOUT);
      } catch (const std::exception &e) {
        service_error("cannot start the private dpfpga service", e);
      }
      std::strncpy(buf.data(), service_->socket_path().c_str(), buf.size() - 1);
    }
    MPI_Bcast(buf.data(), int(buf.size()), MPI_CHAR, 0, node);
    path = buf.data();
  }
  MPI_Comm_free(&node);
  try {
    client_ = std::make_unique<dpfpga::ServiceClient>(path, timeout_, service_.get());
    welcome_ = client_->hello(model_file_);
  } catch (const std::exception &e) {
    service_error("cannot use the dpfpga service", e);
  }
  if (comm->me == 0) {
    std::string types;
    for (auto &t : welcome_.type_map) types += " " + t;
    utils::logmesg(lmp,
                   "pair nvnmd: model {} (hash {}), device {} (lanes {}) in service pid {}{}; type map{}, "
                   "rcut {} A, sel {}\n",
                   model_file_, welcome_.model_hash.substr(0, 12), welcome_.device, welcome_.lanes, welcome_.pid,
                   socket_.empty() ? " (private)" : " at " + socket_, types, welcome_.rcut,
                   utils::join_words(
                       [&] {
                         std::vector<std::string> s;
                         for (int v : welcome_.sel) s.push_back(std::to_string(v));
                         return s;
                       }(),
                       ","));
  }
}

void PairNVNMD::service_error(const std::string &what, const std::exception &e)
{
  // error->one aborts without running destructors: stop a private service (and remove its directory) now.
  std::string message = e.what();
  client_.reset();
  service_.reset();
  error->one(FLERR, "pair nvnmd: {}: {}", what, message);
}

void PairNVNMD::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 2 + ntypes || std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair nvnmd: pair_coeff must be `* *` followed by one element per atom type ({} types), "
                      "e.g. pair_coeff * * Ge Te; got {} element(s)",
               ntypes, std::max(0, narg - 2));
  type_to_model_.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    std::string element = arg[1 + t];
    for (size_t k = 0; k < welcome_.type_map.size(); k++)
      if (welcome_.type_map[k] == element) type_to_model_[t] = int(k);
    if (type_to_model_[t] < 0) {
      std::string known;
      for (auto &e : welcome_.type_map) known += (known.empty() ? "" : " ") + e;
      error->all(FLERR, "pair nvnmd: element {} (atom type {}) is not in the model's type map [{}]", element, t,
                 known);
    }
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairNVNMD::init_style()
{
  if (force->newton_pair == 0)
    error->all(FLERR, "pair nvnmd requires newton pair on (forces on ghost atoms are returned to their owners)");
  if (std::strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair nvnmd requires units metal (eV, Angstrom); this input uses units {}",
               update->unit_style);
  if (!client_) error->all(FLERR, "pair nvnmd: no service connection (pair_style failed?)");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairNVNMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0 && setflag[j][i] == 0)
    error->all(FLERR, "pair nvnmd: pair_coeff * * ELEMENTS ... was not given");
  return welcome_.rcut;
}

void PairNVNMD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  double t0 = now();
  double **x = atom->x, **f = atom->f;
  int *type = atom->type;
  tagint *tag = atom->tag;
  int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  int inum = list->inum, *ilist = list->ilist, *numneigh = list->numneigh, **firstneigh = list->firstneigh;
  const double rc = welcome_.rcut + PRESELECT_MARGIN, rc2 = rc * rc;

  dpfpga::Domain &d = domain_;
  d.nlocal = uint64_t(nlocal);
  d.nall = uint64_t(nall);
  d.x.resize(3 * size_t(nall));
  d.ids.resize(nall);
  d.types.resize(nall);
  for (int i = 0; i < nall; i++) {
    d.x[3 * i] = x[i][0];
    d.x[3 * i + 1] = x[i][1];
    d.x[3 * i + 2] = x[i][2];
    d.ids[i] = atom->tag_enable ? int64_t(tag[i]) : int64_t(i) + 1;
    d.types[i] = type_to_model_[type[i]];
  }
  // Neighbours within the cutoff, grouped by local atom 0..nlocal-1 (CSR): count, then fill.
  d.numneigh.assign(nlocal, 0);
  for (int ii = 0; ii < inum; ii++) {
    int i = ilist[ii], *jl = firstneigh[i], n = 0;
    for (int k = 0; k < numneigh[i]; k++) {
      int j = jl[k] & NEIGHMASK;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < rc2) n++;
    }
    d.numneigh[i] = n;
  }
  std::vector<size_t> start(nlocal + 1, 0);
  for (int i = 0; i < nlocal; i++) start[i + 1] = start[i] + size_t(d.numneigh[i]);
  d.neighbors.resize(start[nlocal]);
  for (int ii = 0; ii < inum; ii++) {
    int i = ilist[ii], *jl = firstneigh[i];
    size_t at = start[i];
    for (int k = 0; k < numneigh[i]; k++) {
      int j = jl[k] & NEIGHMASK;
      double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < rc2) d.neighbors[at++] = j;
    }
  }
  namespace proto = dpfpga::protocol;
  d.want = (eflag_atom ? uint32_t(proto::WANT_EATOM) : 0u) | (vflag_atom ? uint32_t(proto::WANT_VATOM) : 0u) |
           (allow_below_rmin_ ? uint32_t(proto::ALLOW_BELOW_RMIN) : 0u);
  double t1 = now();
  try {
    client_->evaluate(d, reply_);
  } catch (const std::exception &e) {
    service_error("step " + std::to_string(update->ntimestep) + " failed", e);
  }
  double t2 = now();

  const dpfpga::Reply &r = reply_;
  for (int i = 0; i < nall; i++) {
    f[i][0] += r.forces[3 * i];
    f[i][1] += r.forces[3 * i + 1];
    f[i][2] += r.forces[3 * i + 2];
  }
  if (eflag_global) eng_vdwl += r.energy;
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += r.virial[k];
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += r.eatom[i];
  if (vflag_atom)
    for (int i = 0; i < nall; i++)
      for (int k = 0; k < 6; k++) vatom[i][k] += r.vatom[6 * i + k];
  for (int k = 0; k < 4; k++) service_time_[k] += r.timings[k];
  if (allow_below_rmin_) {
    // Allowed (else the service refuses such a pair), but never silent: summed over ranks (only rank 0
    // prints), a warning the first time, and the count at the end.
    long mine = long(r.below_rmin), all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_LONG, MPI_SUM, world);
    if (all && below_rmin_steps_ == 0 && comm->me == 0)
      error->warning(FLERR,
                     "pair nvnmd: step {}: {} neighbour record(s) closer than the model's r_min; the tables are "
                     "held constant there (below_rmin allow); later steps are counted and reported at the end",
                     update->ntimestep, all);
    below_rmin_records_ += all;
    below_rmin_steps_ += all ? 1 : 0;
  }
  steps_++;
  t_pack_ += t1 - t0;
  t_unpack_ += now() - t2;
}

/* Where a step's time goes, on rank 0 (the benchmark reads this line). */
void PairNVNMD::report()
{
  if (!client_ || steps_ == 0 || comm->me != 0) return;
  if (allow_below_rmin_)
    utils::logmesg(lmp, "pair nvnmd: {} of {} evaluations had neighbour records below r_min ({} records in all, "
                        "all ranks; below_rmin allow)\n", below_rmin_steps_, steps_, below_rmin_records_);
  auto &c = *client_;
  double n = double(steps_), ms = 1e3 / n;
  utils::logmesg(lmp,
                 "pair nvnmd timing (rank 0, {} evaluations, ms per evaluation): pack {:.3f} send {:.3f} "
                 "wait {:.3f} receive {:.3f} unpack {:.3f}; in the service: encode {:.3f} device {:.3f} "
                 "assemble {:.3f} total {:.3f}; {:.1f} kB sent, {:.1f} kB received per evaluation\n",
                 steps_, t_pack_ * ms, c.t_send * ms, c.t_wait * ms, c.t_recv * ms, t_unpack_ * ms,
                 service_time_[0] * ms, service_time_[1] * ms, service_time_[2] * ms, service_time_[3] * ms,
                 c.bytes_sent / n / 1e3, c.bytes_received / n / 1e3);
}
