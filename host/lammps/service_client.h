/* The C++ side of the dpfpga service protocol (contract/protocol.py, through the generated
 * dpfpga/protocol.h; host/service.py is the service), for the LAMMPS
 * pair style.  No LAMMPS types here: failures are ServiceError exceptions whose text is meant for a
 * user, and the pair style turns them into LAMMPS errors.
 *
 *   PrivateService svc(python, model, device, chunk_atoms, max_clients, startup_timeout);
 *                                                           // `python -m host serve` on a fresh socket
 *   ServiceClient c(svc.socket_path(), timeout, &svc);      // or a user's service: ServiceClient(path, t)
 *   Welcome w = c.hello(model_file);                        // type map, rcut, device; model checked
 *   c.evaluate(request, reply);                             // one STRUCTURE -> one FORCES
 *
 * Every wait has a deadline, and while waiting the client asks the private service (if any) whether it
 * is still alive, so a dead or stopped service ends in an error, never a hang. */
#ifndef DPFPGA_SERVICE_CLIENT_H
#define DPFPGA_SERVICE_CLIENT_H

#include "dpfpga/protocol.h"  // generated from contract/protocol.py (python -m contract headers)

#include <cstdint>
#include <stdexcept>
#include <string>
#include <sys/types.h>
#include <vector>

namespace dpfpga {

class ServiceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/* What the service says about itself and its model (WELCOME). */
struct Welcome {
  std::string device, model_hash;
  int lanes = 0;
  long pid = 0;
  std::vector<std::string> type_map;
  std::vector<int> sel;
  double rcut = 0.0;
};

/* STRUCTURE: one rank's domain: local atoms 0..nlocal-1, then ghosts; the local atoms' neighbours (CSR).
 * (Not `Domain`: that is the native core's (dpfpga/core.h), compiled into the same plugin.) */
struct StructureRequest {
  uint64_t nlocal = 0, nall = 0;
  std::vector<double> x;          // nall * 3
  std::vector<int64_t> ids;       // nall: LAMMPS atom ids, for the service's messages
  std::vector<int32_t> types;     // nall: model types
  std::vector<int32_t> numneigh;  // nlocal
  std::vector<int32_t> neighbors; // sum(numneigh), indices into x
  uint32_t want = 0;              // protocol::WANT_EATOM | WANT_VATOM | ALLOW_BELOW_RMIN
};

/* FORCES: the fixed-point results, converted to double once (exact). */
struct Reply {
  double energy = 0.0;
  double virial[protocol::FORCES_VIRIAL_COUNT] = {};    // xx yy zz xy xz yz
  double timings[protocol::FORCES_TIMINGS_COUNT] = {};  // service: encode, device, assemble, total (s)
  uint32_t below_rmin = 0;                 // neighbour records below r_min evaluated (ALLOW_BELOW_RMIN)
  std::vector<double> forces;              // nall * 3
  std::vector<double> eatom;               // nlocal (when asked)
  std::vector<double> vatom;               // nall * 6 (when asked)
};

/* A `python -m host serve` process owned by this one: started on a socket in a fresh private
 * directory ($TMPDIR or /tmp, dpfpga-nvnmd-XXXXXX), accepting `max_clients` connections (the node's
 * ranks), stopped (SIGTERM, then SIGKILL) by the destructor, which then removes the directory.  It runs
 * in a session of its own, so that the signals that end this process's group (mpirun kills every
 * rank's group with SIGKILL when any rank aborts) do not reach it: it stops by itself once its owner is
 * gone (--owner-pid) and then removes the directory, so nothing is left running or on disk. */
class PrivateService {
 public:
  PrivateService(const std::string &python, const std::string &model, const std::string &device,
                 int chunk_atoms, int max_clients, double startup_timeout);
  ~PrivateService();
  PrivateService(const PrivateService &) = delete;
  PrivateService &operator=(const PrivateService &) = delete;

  const std::string &socket_path() const { return socket_; }
  /* "" while the process runs; otherwise how it ended and the tail of its log. */
  std::string failure();

 private:
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
  std::string log_tail(size_t max_lines = 12) const;
  void stop();
};

class ServiceClient {
 public:
  /* `watch` (may be null): a private service whose death ends every wait at once. */
  ServiceClient(const std::string &socket_path, double timeout, PrivateService *watch = nullptr);
  ~ServiceClient();
  ServiceClient(const ServiceClient &) = delete;
  ServiceClient &operator=(const ServiceClient &) = delete;

  Welcome hello(const std::string &model_file);
  void evaluate(const StructureRequest &d, Reply &r);

  /* Seconds spent sending, waiting for the first byte of the reply, and reading it; bytes moved. */
  double t_send = 0, t_wait = 0, t_recv = 0;
  uint64_t bytes_sent = 0, bytes_received = 0, requests = 0;

 private:
  int fd_ = -1;
  std::string path_;
  double timeout_;
  PrivateService *watch_;
  struct Part { const void *data; size_t size; };
  void send_frame(uint16_t type, const std::vector<Part> &parts);
  uint16_t recv_frame(std::vector<char> &payload, const char *expected);
  void recv_exact(char *buf, size_t n, double deadline, const char *what);
  void wait_readable(double deadline, const char *what, size_t got, size_t n);
  [[noreturn]] void fail(const std::string &message);
  /* The message of an ERROR frame the service left in our socket before closing it, "" if none. */
  std::string pending_error();
  static std::string error_message(const std::string &payload);
  static constexpr size_t MAX_PENDING = 1 << 16;  // an ERROR frame is far smaller
};

}  // namespace dpfpga

#endif
