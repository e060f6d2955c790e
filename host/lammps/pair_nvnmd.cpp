/* pair_style nvnmd: see pair_nvnmd.h.  LAMMPS-side bookkeeping: the per-atom work is the native core's
 * (host/native/, dpfpga/core.h) or the service's (service_client.cpp, host/service.py), and both return
 * the same exact integers, converted to double here or there the same way. */
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

#include "dpfpga/devices.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <mpi.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

using namespace LAMMPS_NS;

namespace {

double now()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* Pairs sent to the service are pre-selected a hair beyond the model's cutoff, only to send less; the
 * service makes the decisive |r|^2 < rcut^2 test on the same vectors as the ASE path (host/neighbors.py). */
constexpr double PRESELECT_MARGIN = 1e-6;  // Å
/* How long the private service, or `python -m host native-model`, may take to start (imports, opening
 * the device, compiling an rtl model). */
constexpr double STARTUP_TIMEOUT = 1800.0;  // s

const char *USAGE = "pair_style nvnmd MODEL [device NAME] [host native|service] [socket PATH] [timeout SECONDS] "
                    "[python EXE] [chunk N] [lanes N] [threads N] [below_rmin error|allow]";
const char *DEVICES = "reference, cpu, zero, xdma[:PREFIX[,PREFIX...]], rtl";

/* Devices the native core runs in this process.  The NumPy reference lives in Python: the service. */
bool runs_in_process(const std::string &device)
{
  return device == "zero" || device == "rtl" || device == "xdma" || device.rfind("xdma:", 0) == 0 ||
         device == "cpu" || device.rfind("cpu:", 0) == 0;
}

/* What host/service.py writes before the message of a structure that failed, by the Python exception
 * each ErrorKind stands for: both hosts end a run with the same words. */
const char *service_label(dpfpga::ErrorKind kind)
{
  using K = dpfpga::ErrorKind;
  switch (kind) {
    case K::InputRange: return "input out of range";
    case K::NeighborOverflow: return "too many neighbours";
    case K::Structure: return "bad structure";
    case K::DeviceFlag: return "pipeline flags";
    case K::CloseContact: return "close contact";
    case K::Type: return "KeyError";
    case K::Device: return "DeviceError";
    case K::DeviceTimeout: return "DeviceTimeout";
    case K::Model: return "ModelFileError";
  }
  return "error";
}

std::string join(const std::vector<std::string> &words, const char *sep = " ")
{
  std::string s;
  for (auto &w : words) s += (s.empty() ? "" : sep) + w;
  return s;
}

std::string last_lines(const std::string &text, size_t max_lines)
{
  size_t end = text.size();
  while (end > 0 && text[end - 1] == '\n') end--;
  size_t start = end;
  for (size_t n = 0; start > 0 && n < max_lines; n++) {
    start = text.rfind('\n', start - 1);
    if (start == std::string::npos) {
      start = 0;
      break;
    }
  }
  return text.substr(start == 0 ? 0 : start + 1, end - (start == 0 ? 0 : start + 1));
}

/* A command's output: `ok` with its stdout, or why it failed (exit status or signal, the end of its
 * stderr).  posix_spawn, not fork: forking an MPI process that holds shared-memory segments is unsafe.
 * The child stays in our process group, so whatever ends LAMMPS ends it too. */
struct CommandOutput {
  bool ok = false;
  std::string out, why;
};

CommandOutput run_command(const std::vector<std::string> &args, double timeout)
{
  CommandOutput r;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    r.why = std::string("cannot make a pipe: ") + std::strerror(errno);
    return r;
  }
  if (pipe2(err, O_CLOEXEC) != 0) {
    r.why = std::string("cannot make a pipe: ") + std::strerror(errno);
    close(out[0]);
    close(out[1]);
    return r;
  }
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);  // dup2 clears O_CLOEXEC on 1 and 2 only
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);  // not the rank's MPI sockets and launcher pipes
#endif
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0].c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  close(err[1]);
  if (rc != 0) {
    close(out[0]);
    close(err[0]);
    r.why = "cannot start Python '" + args[0] + "': " + std::strerror(rc) +
            " (choose the interpreter with `pair_style nvnmd MODEL python PATH` or DPFPGA_PYTHON)";
    return r;
  }
  // Both pipes drained together: a child that fills one while we block on the other would never end.
  std::string text[2];
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  const double deadline = now() + timeout;
  bool timed_out = false;
  char buf[65536];
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    const double left = deadline - now();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    const int n = poll(fds, 2, int(std::min(left, 1.0) * 1000) + 1);
    if (n < 0 && errno == EINTR) continue;  // revents are not set: never read a pipe that may block
    if (n < 0) break;
    for (int k = 0; k < 2; k++) {
      if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[k].fd, buf, sizeof(buf));
      if (got > 0) {
        text[k].append(buf, size_t(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        close(fds[k].fd);
        fds[k].fd = -1;
      }
    }
  }
  for (auto &p : fds)
    if (p.fd >= 0) close(p.fd);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.out = std::move(text[0]);
  if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    r.ok = true;
    return r;
  }
  if (timed_out)
    r.why = "it did not finish within " + std::to_string(int(timeout)) + " s";
  else if (WIFEXITED(status))
    r.why = "exit status " + std::to_string(WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    r.why = "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  else
    r.why = "it ended abnormally";
  const std::string tail = last_lines(text[1], 12);
  if (!tail.empty()) r.why += "; its stderr ends:\n" + tail;
  return r;
}

/* rank 0's string to every rank of `comm`. */
void broadcast(std::string &s, MPI_Comm comm)
{
  long long n = (long long) s.size();
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, comm);
  s.resize(size_t(n));
  for (long long at = 0; at < n; at += INT_MAX) {  // MPI counts are int
    const int piece = int(std::min<long long>(n - at, INT_MAX));
    MPI_Bcast(&s[size_t(at)], piece, MPI_CHAR, 0, comm);
  }
}

}  // namespace

PairNVNMD::PairNVNMD(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // The exact virial (sum over pairs) comes with the forces; LAMMPS must not add its own F.r sum.
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairNVNMD::~PairNVNMD()
{
  report();
  release();
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

/* Everything a pair_style made: the native cores before their device and model, the client (BYE)
 * before its service (SIGTERM; the private directory removed). */
void PairNVNMD::release()
{
  core_.reset();
  device_.reset();
  model_.reset();
  client_.reset();
  service_.reset();
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
  release();
  steps_ = csr_reused_ = 0;
  std::fill(csr_shape_, csr_shape_ + 3, -1);
  t_pack_ = t_unpack_ = t_pair_ = 0.0;
  std::fill(service_time_, service_time_ + 4, 0.0);
  device_name_ = "reference";
  socket_.clear();
  timeout_ = 600.0;
  chunk_atoms_ = 4096;
  lanes_ = 1;
  allow_below_rmin_ = false;
  below_rmin_records_ = below_rmin_steps_ = 0;
  const char *env_python = std::getenv("DPFPGA_PYTHON");
  python_ = (env_python && *env_python) ? env_python : "python3";

  char resolved[PATH_MAX];
  if (!realpath(arg[0], resolved))
    error->all(FLERR, "pair nvnmd: cannot read model file {}: {}", arg[0], std::strerror(errno));
  model_file_ = resolved;
  bool device_given = false, python_given = false, lanes_given = false, threads_given = false;
  threads_ = 0;
  std::string host;
  for (int k = 1; k < narg; k += 2) {
    std::string key = arg[k];
    if (k + 1 >= narg) error->all(FLERR, "pair nvnmd: keyword {} needs a value; usage: {}", key, USAGE);
    std::string value = arg[k + 1];
    if (key == "device") {
      device_name_ = value;
      device_given = true;
    } else if (key == "host") {
      if (value != "native" && value != "service")
        error->all(FLERR, "pair nvnmd: host must be `native` or `service`, got {}", value);
      host = value;
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
    } else if (key == "lanes") {
      lanes_ = utils::inumeric(FLERR, value, false, lmp);
      if (lanes_ < 1) error->all(FLERR, "pair nvnmd: lanes must be >= 1, got {}", value);
      lanes_given = true;
    } else if (key == "threads") {
      threads_ = utils::inumeric(FLERR, value, false, lmp);
      if (threads_ < 1) error->all(FLERR, "pair nvnmd: threads must be >= 1, got {}", value);
      threads_given = true;
    } else {
      error->all(FLERR, "pair nvnmd: unknown keyword {}; usage: {}", key, USAGE);
    }
  }
  if (!socket_.empty() && (device_given || python_given))
    error->all(FLERR, "pair nvnmd: `socket` connects to a running service, which has its own device and "
                      "Python; drop `device`/`python` or drop `socket`");
  if (!socket_.empty() && host == "native")
    error->all(FLERR, "pair nvnmd: `socket` connects to a running service; drop `host native` or drop `socket`");
  const bool in_process = runs_in_process(device_name_);
  if (host == "native" && !in_process)
    error->all(FLERR, "pair nvnmd: device {} does not run in-process ({}); drop `host native`", device_name_,
               device_name_ == "reference" ? "the NumPy reference is Python: it runs in the service"
                                           : std::string("in-process devices: cpu, zero, xdma[:PREFIX[,PREFIX...]], rtl"));
  if (host.empty() && !in_process && device_name_ != "reference")
    error->all(FLERR, "pair nvnmd: unknown device '{}'; choose from {} (or any device of the service with "
                      "`host service`)", device_name_, DEVICES);
  host_ = (host == "service" || !socket_.empty() || !in_process) ? Host::Service : Host::Native;
  if (host_ == Host::Service && lanes_given)
    error->all(FLERR, "pair nvnmd: `lanes` applies to the in-process devices (host native); the service opens "
                      "its device with one lane");
  if (threads_given && (host_ == Host::Service || device_name_.rfind("cpu", 0) != 0))
    error->all(FLERR, "pair nvnmd: `threads` applies to device cpu in-process (host native)");
  if (host_ == Host::Native)
    start_native();
  else
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
    if (node_rank == 0) {
      try {
        // Every rank of this node connects, however many cores it has; + 1: the connection that probed
        // the service's start may not be counted out yet when the ranks connect.
        service_ = std::make_unique<dpfpga::PrivateService>(python_, model_file_, device_name_, chunk_atoms_,
                                                            node_size + 1, STARTUP_TIMEOUT);
      } catch (const std::exception &e) {
        service_error("cannot start the private dpfpga service", e);
      }
      path = service_->socket_path();
    }
    broadcast(path, node);
  }
  MPI_Comm_free(&node);
  dpfpga::Welcome welcome;
  try {
    client_ = std::make_unique<dpfpga::ServiceClient>(path, timeout_, service_.get());
    welcome = client_->hello(model_file_);
  } catch (const std::exception &e) {
    service_error("cannot use the dpfpga service", e);
  }
  type_map_ = welcome.type_map;
  sel_ = welcome.sel;
  rcut_ = welcome.rcut;
  if (comm->me == 0) {
    std::vector<std::string> sel;
    for (int v : sel_) sel.push_back(std::to_string(v));
    utils::logmesg(lmp,
                   "pair nvnmd: model {} (hash {}), device {} (lanes {}) in service pid {}{}; type map {}, "
                   "rcut {} A, sel {}\n",
                   model_file_, welcome.model_hash.substr(0, 12), welcome.device, welcome.lanes, welcome.pid,
                   socket_.empty() ? " (private)" : " at " + socket_, join(type_map_), rcut_, join(sel, ","));
  }
}

/* The model constants from Python, once (rank 0 runs the command, every rank reads its text), then
 * this rank's own device.  After this, no Python: compute() calls the core. */
void PairNVNMD::start_native()
{
  const bool rtl = device_name_ == "rtl";
  std::vector<std::string> args = {python_, "-m", "host", "native-model", model_file_};
  if (rtl) args.insert(args.end(), {"--rtl-harness", "--lanes", std::to_string(lanes_)});
  const std::string command = join(args);
  std::string text;
  int ok = 1;
  if (comm->me == 0) {
    CommandOutput r = run_command(args, STARTUP_TIMEOUT);
    ok = r.ok;
    text = r.ok ? r.out : r.why;
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, world);
  broadcast(text, world);
  if (!ok) error->all(FLERR, "pair nvnmd: `{}` failed: {}", command, text);

  model_ = std::make_unique<dpfpga::HostModel>();
  try {
    *model_ = dpfpga::HostModel::parse(text);  // reads up to the `end` line
  } catch (const std::exception &e) {
    error->all(FLERR, "pair nvnmd: cannot read the model constants that `{}` printed: {}", command, e.what());
  }
  std::string spec = device_name_;
  if (rtl) {
    // The line after `end`: `rtl_harness PATH`.  Every rank runs that harness (one process each);
    // it is on rank 0's file system, so ranks on other nodes need a shared one.
    const std::string key = "\nrtl_harness ";
    const size_t at = text.find(key);
    if (at == std::string::npos)
      error->all(FLERR, "pair nvnmd: `{}` printed no `rtl_harness PATH` line", command);
    const size_t from = at + key.size(), to = text.find('\n', from);
    spec = "rtl:" + text.substr(from, to == std::string::npos ? std::string::npos : to - from);
  }

  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int node_rank;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_free(&node);
  dpfpga::DeviceConfig config;
  config.lanes = lanes_;
  config.timeout = timeout_;
  config.node_rank = node_rank;  // xdma with several cards: this rank drives card node_rank % cards
  config.threads = threads_;      // cpu: 0 = the cores this rank may run on
  try {
    device_ = dpfpga::open_device(spec, *model_, config);
  } catch (const std::exception &e) {
    native_error("cannot open device " + spec, e, false);
  }
  type_map_ = model_->type_map;
  sel_ = model_->sel;
  rcut_ = model_->rcut;
  if (comm->me == 0) {
    std::vector<std::string> sel;
    for (int v : sel_) sel.push_back(std::to_string(v));
    utils::logmesg(lmp,
                   "pair nvnmd: model {} (hash {}), device {} in-process (native core; rank 0's device, each "
                   "rank has its own); type map {}, rcut {} A, sel {}\n",
                   model_file_, model_->hash.substr(0, 12), device_->describe(), join(type_map_), rcut_,
                   join(sel, ","));
  }
}

void PairNVNMD::service_error(const std::string &what, const std::exception &e)
{
  // error->one aborts without running destructors: stop a private service (and remove its directory) now.
  std::string message = e.what();
  release();
  error->one(FLERR, "pair nvnmd: {}: {}", what, message);
}

/* A failed evaluation's dpfpga::Error worded as the service words the Python exception it stands for
 * (host/service.py, Service._structure), so that a run ends with the same ERROR on either host. */
void PairNVNMD::native_error(const std::string &what, const std::exception &e, bool evaluating)
{
  std::string message = e.what();
  auto *de = dynamic_cast<const dpfpga::Error *>(&e);
  if (de && evaluating)
    message = std::string(service_label(de->kind)) + ": " + message + " (atoms are named by the client's atom ids)";
  // Before error->one (which aborts without destructors): an rtl harness is stopped, a card's lock freed.
  release();
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
    for (size_t k = 0; k < type_map_.size(); k++)
      if (type_map_[k] == element) type_to_model_[t] = int(k);
    if (type_to_model_[t] < 0)
      error->all(FLERR, "pair nvnmd: element {} (atom type {}) is not in the model's type map [{}]", element, t,
                 join(type_map_));
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
  if (!client_ && !device_) error->all(FLERR, "pair nvnmd: no device and no service (pair_style failed?)");
  neighbor->add_request(this, NeighConst::REQ_FULL);
  std::fill(csr_shape_, csr_shape_ + 3, -1);  // a new list object: the first evaluation makes the CSR
}

double PairNVNMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0 && setflag[j][i] == 0)
    error->all(FLERR, "pair nvnmd: pair_coeff * * ELEMENTS ... was not given");
  return rcut_;
}

void PairNVNMD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const double t0 = now();
  if (host_ == Host::Native)
    compute_native();
  else
    compute_service();
  steps_++;
  t_pair_ += now() - t0;
}

/* ---- host native ------------------------------------------------------------------------------- */

/* The core, made when first needed, set for this step: the pair sum of the virial only on the steps
 * that need a pressure or per-atom virials (LAMMPS's vflag), as its own pair styles tally it. */
dpfpga::Core &PairNVNMD::core_for(bool virial, bool atomic_virial)
{
  if (!core_) {
    dpfpga::Options o;
    o.chunk_atoms = size_t(chunk_atoms_);
    o.strict = true;  // flagged atoms are an error, as in the service
    o.allow_below_rmin = allow_below_rmin_;
    o.timeout = timeout_;
    core_ = std::make_unique<dpfpga::Core>(*model_, *device_, o);
  }
  core_->options().virial = virial;
  core_->options().atomic_virial = atomic_virial;
  return *core_;
}

/* The Domain the core reads: LAMMPS's own positions (atom->x is one contiguous nmax x 3 block: no copy),
 * model types and atom ids for messages, and the local atoms' neighbour lists as an int64 CSR grouped by
 * local atom.
 *
 * The lists go over as LAMMPS made them, skin included, not pre-selected within rcut as for the service:
 * the core makes the decisive |r|^2 < rcut^2 test on every candidate anyway (on the same expression, so
 * the pairs kept are the same), and a second distance test here cost 4x the copy (21,952 atoms, 107
 * candidates each: 33 ms against 8 ms per step).  So the CSR depends on LAMMPS's list alone, not on the
 * positions, and is made again only when LAMMPS rebuilt its list (neighbor->ago == 0: at every setup and
 * reneighbouring, as DeePMD-kit's pair_deepmd relies on too), with the atom ids; the counts are checked
 * besides. */
void PairNVNMD::build_domain(dpfpga::Domain &d)
{
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  const int inum = list->inum, *ilist = list->ilist, *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  // Types every step: fix atom/swap changes them (ghosts' too, by forward communication) without
  // reneighbouring.
  model_types_.resize(size_t(nall));
  const int *to_model = type_to_model_.data();
  for (int i = 0; i < nall; i++) model_types_[i] = to_model[type[i]];

  const int shape[3] = {nlocal, nall, inum};
  d.list_unchanged = neighbor->ago != 0 && std::equal(shape, shape + 3, csr_shape_);
  if (d.list_unchanged) {
    csr_reused_++;
  } else {
    std::copy(shape, shape + 3, csr_shape_);
    ids_.resize(size_t(nall));  // which atom is where changes only when the list is rebuilt, too
    if (atom->tag_enable)
      for (int i = 0; i < nall; i++) ids_[i] = int64_t(tag[i]);
    else
      for (int i = 0; i < nall; i++) ids_[i] = int64_t(i) + 1;
    // LAMMPS's list is usually in atom order (ilist[ii] == ii): then one pass writes the CSR directly.
    size_t total = 0;
    bool in_order = true;
    for (int ii = 0; ii < inum; ii++) {
      total += size_t(numneigh[ilist[ii]]);
      in_order = in_order && ilist[ii] == ii;
    }
    std::vector<int32_t> &out = in_order ? neighbors_ : staging_;
    if (out.size() < total) out.resize(total);
    numneigh_.assign(size_t(nlocal), 0);
    int32_t *o = out.data();
    for (int ii = 0; ii < inum; ii++) {
      const int i = ilist[ii], *jl = firstneigh[i], n = numneigh[i];
      for (int k = 0; k < n; k++) o[k] = jl[k] & NEIGHMASK;  // the mask: special-bond bits
      o += n;
      numneigh_[i] = n;
    }
    if (!in_order) {
      // Regroup by local atom: the segments in staging_ are in ilist order.
      std::vector<size_t> segment(size_t(nlocal), 0);
      size_t s = 0;
      for (int ii = 0; ii < inum; ii++) {
        segment[ilist[ii]] = s;
        s += size_t(numneigh[ilist[ii]]);
      }
      if (neighbors_.size() < total) neighbors_.resize(total);
      int32_t *to = neighbors_.data();
      for (int i = 0; i < nlocal; i++) to = std::copy_n(staging_.data() + segment[i], numneigh_[i], to);
    }
  }
  d.nall = size_t(nall);
  d.nlocal = size_t(nlocal);
  d.x = nall ? &atom->x[0][0] : nullptr;
  d.types = model_types_.data();
  d.numneigh = numneigh_.data();
  d.neighbors32 = neighbors_.data();
  d.ids = ids_.data();
}

void PairNVNMD::compute_native()
{
  const double t0 = now();
  dpfpga::Domain d;
  build_domain(d);
  const double t1 = now();
  dpfpga::Result &r = result_;
  r.timings = dpfpga::Timings();
  try {
    core_for(vflag_global, vflag_atom).compute_neighbors(d, r);
  } catch (const std::exception &e) {
    native_error("step " + std::to_string(update->ntimestep) + " failed", e, true);
  }
  const double t2 = now();

  // The exact integers to double, as host/evaluate.py does (an integer rounded to double once, times a
  // power of two: exact), in LAMMPS's Voigt order xx yy zz xy xz yz (host/service.py voigt6).
  const dpfpga::HostModel &m = *model_;
  const double se = std::ldexp(1.0, -m.energy_frac), sf = std::ldexp(1.0, -m.force_frac);
  const double sv = std::ldexp(1.0, -(m.coord_frac + m.force_frac));
  const double sw = std::ldexp(1.0, -(m.coord_frac + m.force_frac + 1));  // W_i = -S_i / 2
  static constexpr int VOIGT[6] = {0, 4, 8, 1, 2, 5};                    // row-major 3x3 index
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  double **f = atom->f;
  const int64_t *F = r.forces.data();
  for (int i = 0; i < nall; i++) {
    f[i][0] += double(F[3 * i]) * sf;
    f[i][1] += double(F[3 * i + 1]) * sf;
    f[i][2] += double(F[3 * i + 2]) * sf;
  }
  if (eflag_global) eng_vdwl += double(r.energy) * se;
  if (vflag_global)
    for (int k = 0; k < 6; k++) virial[k] += double(r.virial[VOIGT[k]]) * sv;
  if (eflag_atom)
    for (int i = 0; i < nlocal; i++) eatom[i] += double(r.e_atom[i]) * se;
  if (vflag_atom)
    for (int i = 0; i < nall; i++)
      for (int k = 0; k < 6; k++) vatom[i][k] += -(double(r.s_atom[9 * size_t(i) + VOIGT[k]]) * sw);
  if (allow_below_rmin_) count_below_rmin(r.below_rmin);
  const dpfpga::Timings &t = r.timings;
  service_time_[0] += t.neighbors_encode;
  service_time_[1] += t.device_wait;
  service_time_[2] += t.assemble;
  service_time_[3] += t.total;
  t_pack_ += t1 - t0;
  t_unpack_ += now() - t2;
}

/* ---- host service ------------------------------------------------------------------------------ */

void PairNVNMD::compute_service()
{
  double t0 = now();
  double **x = atom->x, **f = atom->f;
  int *type = atom->type;
  tagint *tag = atom->tag;
  int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  int inum = list->inum, *ilist = list->ilist, *numneigh = list->numneigh, **firstneigh = list->firstneigh;
  const double rc = rcut_ + PRESELECT_MARGIN, rc2 = rc * rc;

  dpfpga::StructureRequest &d = request_;
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
  if (allow_below_rmin_) count_below_rmin(r.below_rmin);
  t_pack_ += t1 - t0;
  t_unpack_ += now() - t2;
}

/* Allowed (else the core or the service refuses such a pair), but never silent: summed over ranks
 * (only rank 0 prints), a warning the first time, and the count at the end. */
void PairNVNMD::count_below_rmin(uint64_t records)
{
  long mine = long(records), all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_LONG, MPI_SUM, world);
  if (all && below_rmin_steps_ == 0 && comm->me == 0)
    error->warning(FLERR,
                   "pair nvnmd: step {}: {} neighbour record(s) closer than the model's r_min; the tables are "
                   "held constant there (below_rmin allow); later steps are counted and reported at the end",
                   update->ntimestep, all);
  below_rmin_records_ += all;
  below_rmin_steps_ += all ? 1 : 0;
}

/* Where a step's time goes, on rank 0 (the benchmark reads this line). */
void PairNVNMD::report()
{
  if (steps_ == 0 || comm->me != 0 || !(client_ || device_)) return;
  if (allow_below_rmin_)
    utils::logmesg(lmp, "pair nvnmd: {} of {} evaluations had neighbour records below r_min ({} records in all, "
                        "all ranks; below_rmin allow)\n", below_rmin_steps_, steps_, below_rmin_records_);
  double n = double(steps_), ms = 1e3 / n;
  if (device_) {
    utils::logmesg(lmp,
                   "pair nvnmd timing (rank 0, {} evaluations, ms per evaluation): neighbours {:.3f} encode {:.3f} "
                   "device {:.3f} fold {:.3f} unpack {:.3f} total {:.3f}; in-process core {:.3f}, device {}; "
                   "neighbour lists: {} taken over, {} reused\n",
                   steps_, t_pack_ * ms, service_time_[0] * ms, service_time_[1] * ms, service_time_[2] * ms,
                   t_unpack_ * ms, t_pair_ * ms, service_time_[3] * ms, device_name_, steps_ - csr_reused_,
                   csr_reused_);
    return;
  }
  auto &c = *client_;
  utils::logmesg(lmp,
                 "pair nvnmd timing (rank 0, {} evaluations, ms per evaluation): pack {:.3f} send {:.3f} "
                 "wait {:.3f} receive {:.3f} unpack {:.3f}; in the service: encode {:.3f} device {:.3f} "
                 "assemble {:.3f} total {:.3f}; {:.1f} kB sent, {:.1f} kB received per evaluation\n",
                 steps_, t_pack_ * ms, c.t_send * ms, c.t_wait * ms, c.t_recv * ms, t_unpack_ * ms,
                 service_time_[0] * ms, service_time_[1] * ms, service_time_[2] * ms, service_time_[3] * ms,
                 c.bytes_sent / n / 1e3, c.bytes_received / n / 1e3);
}
