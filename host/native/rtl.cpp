/* The rtl device in-process (host/devices/rtl.py, same behaviour and messages): the generated RTL in the
 * standalone Verilator harness (sim/harness/pipeline_harness.cpp), kept running as a child process
 * behind two pipes and fed chunk by chunk while earlier chunks' results stream back.
 *
 *   open_rtl(EXE, model, config) runs `EXE --lanes config.lanes --stall-cycles config.stall_cycles`
 *
 * EXE is the harness of this model's pipeline (host.native.rtl_harness(qm, lanes) builds it; the harness
 * holds no model hash, so matching it to the model is the caller's part).  A writer thread feeds the
 * harness's stdin, so submit() never blocks on a full pipe; a reader thread cuts its stdout into atoms
 * (a header beat, then ceil(n / lanes) record beats) and into the submitted chunks.  collect(timeout)
 * returns the oldest chunk's output words; Error(DeviceTimeout) when it is not complete in time;
 * Error(Device) when the stream breaks or the harness exits (with its exit code and the tail of its
 * stderr: a stall is exit 3).  After any error the stream position is unknown: every later submit() or
 * collect() fails ("reopen the device"), as in Python.
 *
 * Every wait is bounded: the threads poll() non-blocking pipes with a timeout, SIGPIPE is blocked in
 * the writer (a harness that died is an Error, not a dead MD run), and the destructor stops the
 * threads, closes the pipes, and kills and reaps the harness if it has not ended within a moment.
 * The harness's stderr goes to an unlinked temporary file, so it can never fill a pipe and block. */
#include "dpfpga/devices.h"
#include "dpfpga/wire.h"
#include "posix.h"
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

extern char **environ;

namespace dpfpga {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "wire words are little-endian; this code copies them as they are in memory");

namespace w = wire;
using posix::Clock;
using posix::Fd;
using posix::hex;
using posix::seconds;
using posix::since;

constexpr size_t READ_SIZE = size_t(1) << 20;  // bytes per read() of the harness's stdout
constexpr int PIPE_SIZE = 1 << 20;             // ask for 1 MiB pipes (default 64 KiB): fewer wake-ups
constexpr int POLL_MS = 200;                   // the longest a thread sleeps before it looks at stop
constexpr double REAP_S = 10.0;                // after EOF on stdout, how long the harness may take to exit
constexpr double LINGER_S = 0.5;               // the destructor's grace before SIGKILL
constexpr size_t STDERR_TAIL = 4000;           // bytes of the harness's stderr in a message

[[noreturn]] void throw_errno(const std::string &what)
{
  const int err = errno;
  throw Error(ErrorKind::Device, what + ": " + std::strerror(err));
}

class RtlDevice : public Device {
 public:
  RtlDevice(std::string exe, int lanes, long stall_cycles) : exe_(std::move(exe)), lanes_(lanes)
  {
    spawn(stall_cycles);
    stop_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (stop_.fd < 0 || wake_.fd < 0) {
      const std::string why = std::strerror(errno);
      kill_and_reap();
      throw Error(ErrorKind::Device, "rtl: eventfd: " + why);
    }
    try {
      writer_ = std::thread(&RtlDevice::writer, this);
      reader_ = std::thread(&RtlDevice::reader, this);
    } catch (...) {  // std::system_error: no thread for us; leave no harness behind
      stop_threads();
      kill_and_reap();
      throw;
    }
  }

  ~RtlDevice() override
  {
    stop_threads();
    // Closing both pipes ends the harness: EOF on its stdin, EPIPE on its stdout.
    in_.reset();
    out_.reset();
    const auto t0 = Clock::now();
    while (!reaped_ && since(t0) < LINGER_S) {
      try_reap();
      if (!reaped_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    kill_and_reap();
  }

  std::string name() const override { return "rtl"; }
  int lanes() const override { return lanes_; }
  std::string describe() const override { return "rtl:" + exe_ + " (lanes " + std::to_string(lanes_) + ")"; }

  void submit(std::vector<uint64_t> words, size_t n_atoms) override
  {
    std::lock_guard<std::mutex> g(mu_);
    if (failed_) throw Error(ErrorKind::Device, "rtl: the simulator failed earlier (" + *failed_ + "); reopen the device");
    if (words.size() % size_t(lanes_) != 0)
      throw Error(ErrorKind::Device, "rtl: a chunk of " + std::to_string(words.size()) + " words is not whole beats of " +
                                         std::to_string(lanes_) + " lanes");
    stream_.expect(n_atoms);
    if (!words.empty()) writes_.push_back(std::move(words));
    write_cv_.notify_one();
    const uint64_t one = 1;
    if (::write(wake_.fd, &one, sizeof one) < 0) {
      // Fails only at the eventfd's maximum count, when the reader is awake anyway.
    }
  }

  std::vector<uint64_t> collect(double timeout) override
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (failed_) throw Error(ErrorKind::Device, "rtl: the simulator failed earlier (" + *failed_ + "); reopen the device");
    if (!done_cv_.wait_for(lk, std::chrono::duration<double>(std::max(0.0, timeout)),
                           [&] { return !done_.empty() || failure_; })) {
      // Late results would be taken for the next chunk's: the device is unusable from here.
      failed_ = "rtl: no result within " + seconds(timeout) + " s";
      throw Error(ErrorKind::DeviceTimeout, *failed_);
    }
    if (!done_.empty()) {  // chunks finished before a failure still come first
      std::vector<uint64_t> out = std::move(done_.front());
      done_.pop_front();
      return out;
    }
    failed_ = *failure_;
    throw Error(ErrorKind::Device, *failure_);
  }

 private:
  void spawn(long stall_cycles)
  {
    if (::access(exe_.c_str(), X_OK) != 0) {
      const int err = errno;
      throw Error(ErrorKind::Device, "rtl: cannot run the harness " + exe_ + ": " + std::strerror(err) +
                                         " (build it: host.native.rtl_harness(qm, lanes))");
    }
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0) throw_errno("rtl: pipe");
    Fd in_read, out_write;
    in_read.reset(in[0]);
    in_.reset(in[1]);
    if (::pipe2(out, O_CLOEXEC) != 0) throw_errno("rtl: pipe");
    out_.reset(out[0]);
    out_write.reset(out[1]);
    // stderr: an unlinked file, read back only to explain a harness that ended.
    const char *tmp = std::getenv("TMPDIR");
    std::string name = std::string(tmp && *tmp ? tmp : "/tmp") + "/dpfpga-rtl-stderr-XXXXXX";
    err_.reset(::mkostemp(&name[0], O_CLOEXEC));
    if (err_.fd < 0) throw_errno("rtl: cannot create a file for the harness's stderr (" + name + ")");
    ::unlink(name.c_str());
    for (int fd : {in_.fd, out_.fd}) ::fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE);  // a smaller pipe only costs speed
    for (int fd : {in_.fd, out_.fd}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_read.fd, 0);  // dup2 clears close-on-exec on 0, 1, 2
    posix_spawn_file_actions_adddup2(&fa, out_write.fd, 1);
    posix_spawn_file_actions_adddup2(&fa, err_.fd, 2);
    const std::string lanes = std::to_string(lanes_), stall = std::to_string(stall_cycles);
    const char *argv[] = {exe_.c_str(), "--lanes", lanes.c_str(), "--stall-cycles", stall.c_str(), nullptr};
    const int rc = posix_spawn(&pid_, exe_.c_str(), &fa, nullptr, const_cast<char *const *>(argv), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      pid_ = -1;
      throw Error(ErrorKind::Device, "rtl: cannot run the harness " + exe_ + ": " + std::strerror(rc));
    }
  }

  /* Both threads wake within POLL_MS. */
  void stop_threads()
  {
    {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
      write_cv_.notify_all();
    }
    const uint64_t one = 1;
    if (::write(stop_.fd, &one, sizeof one) < 0) {
      // Cannot fail for an eventfd below its maximum; the threads also wake every POLL_MS.
    }
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }

  /* Reap the harness if it has exited (non-blocking). */
  void try_reap()
  {
    if (reaped_ || pid_ <= 0) return;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? -WTERMSIG(status) : -1;
    } else if (r < 0 && errno != EINTR) {
      reaped_ = true;  // ECHILD: reaped by someone else (SIGCHLD ignored); the code is lost
    }
  }

  void kill_and_reap()
  {
    try_reap();
    if (reaped_ || pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }

  /* The last STDERR_TAIL bytes of the harness's stderr, trimmed. */
  std::string stderr_tail() const
  {
    struct stat st;
    if (::fstat(err_.fd, &st) != 0 || st.st_size <= 0) return "";
    const off_t from = std::max<off_t>(0, st.st_size - off_t(STDERR_TAIL));
    std::string s(size_t(st.st_size - from), '\0');
    const ssize_t n = ::pread(err_.fd, &s[0], s.size(), from);
    s.resize(n > 0 ? size_t(n) : 0);
    const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
  }

  /* The reader saw EOF: the harness is ending.  Wait (bounded) for its exit code. */
  std::string ended()
  {
    const auto t0 = Clock::now();
    for (try_reap(); !reaped_ && since(t0) < REAP_S; try_reap()) {
      {
        std::lock_guard<std::mutex> g(mu_);
        if (stopping_) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const std::string err = stderr_tail();
    const std::string code = reaped_ && exit_code_ ? std::to_string(*exit_code_) : "unknown";
    return "rtl: simulator ended (exit " + code + "): " + (err.empty() ? "no message" : err);
  }

  void fail(std::string message)
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!failure_) failure_ = std::move(message);
    done_cv_.notify_all();
  }

  void writer()
  {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);  // a harness that died: EPIPE, not a dead process
    for (;;) {
      std::vector<uint64_t> data;
      {
        std::unique_lock<std::mutex> lk(mu_);
        write_cv_.wait(lk, [&] { return stopping_ || !writes_.empty(); });
        if (stopping_) return;
        data = std::move(writes_.front());
        writes_.pop_front();
      }
      const char *p = reinterpret_cast<const char *>(data.data());
      size_t left = data.size() * 8;
      while (left) {
        pollfd fds[2] = {{in_.fd, POLLOUT, 0}, {stop_.fd, POLLIN, 0}};
        if (::poll(fds, 2, POLL_MS) <= 0) continue;
        if (fds[1].revents & POLLIN) return;
        const ssize_t n = ::write(in_.fd, p, left);
        if (n < 0) {
          const int err = errno;
          if (err == EAGAIN || err == EINTR) continue;
          if (err == EPIPE) return;  // the harness is gone; the reader sees EOF and says why
          return fail(std::string("rtl: writing to the simulator failed: ") + std::strerror(err));
        }
        p += n;
        left -= size_t(n);
      }
    }
  }

  void reader()
  {
    std::unique_ptr<uint8_t[]> scratch(new uint8_t[READ_SIZE]);
    for (;;) {
      {
        std::lock_guard<std::mutex> g(mu_);
        if (stopping_) return;
        const size_t before = done_.size();
        const ResultStream::Break br = stream_.cut(done_);
        if (done_.size() != before) done_cv_.notify_all();
        if (br.kind != ResultStream::Break::NONE) {
          if (!failure_)
            failure_ = br.kind == ResultStream::Break::NOT_A_HEADER
                           ? "rtl: expected a result header, got word " + hex(br.word, 16)
                           : "rtl: the simulator sent " + std::to_string(br.bytes) + " bytes nobody asked for";
          done_cv_.notify_all();
          return;
        }
      }
      pollfd p[3] = {{stop_.fd, POLLIN, 0}, {wake_.fd, POLLIN, 0}, {out_.fd, POLLIN, 0}};
      if (::poll(p, 3, POLL_MS) <= 0) continue;
      if (p[0].revents & POLLIN) return;
      if (p[1].revents & POLLIN) {
        uint64_t drain;
        if (::read(wake_.fd, &drain, sizeof drain) < 0) {
          // EAGAIN: nothing to drain.
        }
      }
      if (!p[2].revents) continue;
      const ssize_t got = ::read(out_.fd, scratch.get(), READ_SIZE);
      if (got < 0) {
        const int err = errno;
        if (err == EAGAIN || err == EINTR) continue;
        return fail(std::string("rtl: reading from the simulator failed: ") + std::strerror(err));
      }
      if (got == 0) return fail(ended());
      std::lock_guard<std::mutex> g(mu_);
      stream_.append(scratch.get(), size_t(got));
    }
  }

  const std::string exe_;
  const int lanes_;
  pid_t pid_ = -1;
  bool reaped_ = false;            // the reader reaps on EOF, the destructor after joining it
  std::optional<int> exit_code_;   // negative: killed by that signal (Python's returncode)
  Fd in_, out_, err_;              // harness stdin (write end), stdout (read end), stderr file
  Fd stop_, wake_;                 // eventfds: stop the threads; wake the reader (a chunk submitted)

  std::mutex mu_;                  // guards everything below
  std::condition_variable write_cv_, done_cv_;
  bool stopping_ = false;
  std::deque<std::vector<uint64_t>> writes_;  // chunks for the writer
  ResultStream stream_{lanes_};               // the simulator's output cut into chunks
  std::deque<std::vector<uint64_t>> done_;    // output words per chunk, in order
  std::optional<std::string> failure_;        // what ended the reader or writer
  std::optional<std::string> failed_;         // the error a collect() reported: the device is spent
  std::thread writer_, reader_;
};

}  // namespace

std::unique_ptr<Device> open_rtl(const std::string &harness, const HostModel &, const DeviceConfig &config)
{
  if (config.lanes < 1) throw Error(ErrorKind::Device, "rtl: lanes must be >= 1, got " + std::to_string(config.lanes));
  return std::make_unique<RtlDevice>(harness, config.lanes, config.stall_cycles);
}

}  // namespace dpfpga
