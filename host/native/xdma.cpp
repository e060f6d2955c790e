/* The xdma device in-process (host/devices/xdma.py, same behaviour and messages): a dpfpga card on PCIe
 * through the Linux XDMA driver's character devices under a prefix P,
 *
 *   P_h2c_0   host-to-card DMA: each write() is one transfer into the card's input stream
 *   P_c2h_0   card-to-host DMA: read() returns bytes of the card's output stream
 *   P_user    the user BAR: the shell's 32-bit little-endian registers (dpfpga/regs.h), pread/pwrite
 *
 * or through the card simulator's named pipes and register file (sim/xdma_card.py), which tests use.
 *
 * Contract.  open_xdma() checks that a dpfpga shell answers (MAGIC, VERSION), takes the lane count from
 * LANES (config.lanes is not used: the card says), refuses a card loaded with another model
 * (MODEL_HASH0..7 against model.hash), soft-resets the card (a previous session may have left results
 * in the stream) and enables it.  submit() never blocks: a writer thread sends the chunk in transfers of
 * at most MAX_TRANSFER bytes.  A reader thread cuts the output stream into atoms (a header beat, then
 * ceil(n / lanes) record beats) and into the submitted chunks; collect(timeout) returns the oldest
 * chunk's output words, Error(DeviceTimeout) when it is not complete in time, Error(Device) (with the
 * STATUS, FLAGS and counter registers in the message) when the card reports an error or the stream
 * breaks.  The destructor stops the threads, clears CONTROL.enable and closes the files; it never waits
 * on the card beyond the threads' poll interval (and one second for a shared card's lock).
 *
 * Every wait is bounded: the threads poll() non-blocking descriptors with a timeout, so a card that
 * stops answering costs a DeviceTimeout, never a hung host.  (On a real XDMA driver poll() always
 * reports ready and reads/writes block up to the driver's own h2c/c2h timeout; the same code then
 * relies on that timeout.)  Writes block SIGPIPE in the writer thread: a card simulator that goes away
 * is an Error, not a dead MD run.
 *
 * Several cards and several processes.  "P1,P2,..." names the node's cards; this process drives card
 * config.node_rank % cards (as DeePMD-kit and Kokkos assign GPUs to a node's ranks).  Several processes
 * may share one card.  They take turns, one evaluation at a time: begin() takes an exclusive flock() on
 * P_user (waiting at most config.timeout, then Error(DeviceTimeout) naming the prefix) and end()
 * releases it, so one evaluation's chunks are never interleaved with another process's on the stream
 * (flock() cannot time out, so begin() tries every millisecond at most: the hand-over latency).
 * Between begin() and end() the reader reads the stream; outside them it reads only while this process
 * has chunks in flight, so it never takes another process's results.  Hence:
 *   - drive a shared card only between begin() and end() (Core does);
 *   - open() soft-resets the card under the same lock, so it cannot cut into another's evaluation;
 *   - begin() waits for a reset under way, resets a card left busy or in error (a process killed
 *     mid-evaluation), and sets enable (another process's destructor may have cleared it);
 *   - end() after a failed evaluation (chunks not collected, a broken stream) resets the card before
 *     it lets go, so the next holder, and this device's next evaluation, start from a clean stream;
 *   - the destructor clears enable only when it can take the lock (another process may be using it);
 *     a device destroyed mid-evaluation requests a reset instead (enable clear), not waiting for it.
 * flock() works on the driver's character device as on the simulator's regular file; the lock belongs
 * to the open file, so two devices in one process exclude each other too, and a process that dies
 * releases it. */
#include "dpfpga/devices.h"
#include "dpfpga/regs.h"
#include "dpfpga/wire.h"
#include "posix.h"
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace dpfpga {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "wire words and registers are little-endian; this code copies them as they are in memory");

namespace w = wire;
using posix::Clock;
using posix::Fd;
using posix::hex;
using posix::seconds;
using posix::since;

constexpr size_t MAX_TRANSFER = size_t(4) << 20;  // bytes per h2c write(): bounds the driver's pinned pages
constexpr size_t READ_SIZE = size_t(1) << 20;     // bytes per c2h read()
constexpr int POLL_MS = 200;                      // the longest a thread sleeps before it looks at stop
constexpr uint32_t MAX_LANES = 4096;              // a LANES register above this is not a card we know
constexpr double STATUS_SLICE_S = 0.5;            // collect() looks at STATUS.error this often
constexpr int LOCK_POLL_MAX_US = 1000;            // longest sleep between tries for a shared card's lock
constexpr uint32_t SUPPORTED_VERSIONS[] = {regs::SHELL_VERSION};  // shell interfaces this host drives

class XdmaDevice : public Device {
 public:
  XdmaDevice(std::string prefix, int card, int cards, const HostModel &model, const DeviceConfig &config)
      : prefix_(std::move(prefix)), card_(card), cards_(cards), model_hash_(model.hash), timeout_(config.timeout)
  {
    open();
  }

  ~XdmaDevice() override
  {
    stop_threads();
    // Clear enable, but only under the lock: another process may be using the card right now, and it
    // needs enable.  A stream left mid-evaluation is reset as well, without waiting for the card (the
    // next begin() waits for the reset to finish): a destructor should not wait on hardware.
    try {
      if (held_ || lock(std::min(timeout_, 1.0), false))
        write_reg(regs::CONTROL_ADDR, dirty() ? regs::CONTROL_RESET : 0);
    } catch (const std::exception &) {
      // The card may be gone; the destructor must still release everything.
    }
    unlock();
  }

  std::string name() const override { return "xdma"; }
  int lanes() const override { return lanes_; }
  std::string describe() const override
  {
    std::string s = "xdma:" + prefix_ + " (lanes " + std::to_string(lanes_);
    if (cards_ > 1) s += ", card " + std::to_string(card_) + " of " + std::to_string(cards_);
    return s + ", model " + model_hash_.substr(0, 12) + ")";
  }

  void begin() override
  {
    if (held_) return;
    lock(timeout_, true);
    try {
      await_reset(std::min(timeout_, 30.0));  // one a destructor requested may still be under way
      const auto status = read_reg(regs::STATUS_ADDR).value_or(0);
      if (status & (regs::STATUS_ERROR | regs::STATUS_BUSY)) {
        resync();  // left busy or in error by a process that died mid-evaluation
      } else if (!(read_reg(regs::CONTROL_ADDR).value_or(0) & regs::CONTROL_ENABLE)) {
        write_reg(regs::CONTROL_ADDR, regs::CONTROL_ENABLE);
      }
    } catch (...) {
      unlock();
      throw;
    }
    std::lock_guard<std::mutex> g(mu_);
    held_ = true;
    wake_reader();
  }

  /* Never throws: Core calls it on its error paths.  A reset that fails is reported by the next use. */
  void end() override
  {
    if (!held_) return;
    if (dirty()) {
      try {
        resync();
      } catch (const std::exception &e) {
        std::lock_guard<std::mutex> g(mu_);
        failure_ = prefix_ + ": resetting the card after a failed evaluation failed: " + e.what();
      }
    }
    {
      std::lock_guard<std::mutex> g(mu_);
      held_ = false;
    }
    unlock();
  }

  void submit(std::vector<uint64_t> words, size_t n_atoms) override
  {
    if (words.size() % size_t(lanes_) != 0)
      throw Error(ErrorKind::Device, prefix_ + ": a chunk of " + std::to_string(words.size()) +
                                         " words is not whole beats of " + std::to_string(lanes_) + " lanes");
    std::lock_guard<std::mutex> g(mu_);
    stream_.expect(n_atoms);
    submitted_++;
    if (!words.empty()) writes_.push_back(std::move(words));
    write_cv_.notify_one();
    wake_reader();
  }

  std::vector<uint64_t> collect(double timeout) override
  {
    const auto t0 = Clock::now();
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      if (!done_.empty()) {  // chunks finished before a failure still come first, as in Python
        std::vector<uint64_t> out = std::move(done_.front());
        done_.pop_front();
        collected_++;
        return out;
      }
      if (failure_) throw Error(ErrorKind::Device, *failure_);
      // Wait in slices so that a card that flags an error is reported now, not at the deadline.
      const double slice = std::max(0.0, std::min(STATUS_SLICE_S, timeout - since(t0)));
      if (done_cv_.wait_for(lk, std::chrono::duration<double>(slice), [&] { return !done_.empty() || failure_; }))
        continue;
      lk.unlock();
      const bool card_error = read_reg_quiet(regs::STATUS_ADDR) & regs::STATUS_ERROR;
      std::string st = state();
      lk.lock();
      if (card_error) {
        fail_locked(prefix_ + ": the card reports an error: " + st);
        continue;
      }
      if (since(t0) >= timeout)
        throw Error(ErrorKind::DeviceTimeout, prefix_ + ": no result within " + seconds(timeout) + " s; " + st);
    }
  }

 private:
  // -- files and registers -------------------------------------------------------------------------
  std::string path(const char *which) const { return prefix_ + which; }

  /* The register at `addr`, or nothing when the BAR is too short to hold it. */
  std::optional<uint32_t> read_reg(uint32_t addr) const
  {
    uint32_t v = 0;
    const ssize_t n = ::pread(user_.fd, &v, sizeof v, off_t(addr));
    const int err = errno;
    if (n < 0) throw Error(ErrorKind::Device, prefix_ + ": reading register " + hex(addr) + ": " + std::strerror(err));
    if (n != ssize_t(sizeof v)) return std::nullopt;
    return v;
  }

  uint32_t read_reg_quiet(uint32_t addr) const
  {
    try {
      return read_reg(addr).value_or(0);
    } catch (const Error &) {
      return 0;
    }
  }

  void write_reg(uint32_t addr, uint32_t value) const
  {
    if (::pwrite(user_.fd, &value, sizeof value, off_t(addr)) != ssize_t(sizeof value)) {
      const int err = errno;
      throw Error(ErrorKind::Device, prefix_ + ": writing register " + hex(addr) + ": " + std::strerror(err));
    }
  }

  /* STATUS, FLAGS and counters, for error messages (the Python device's text). */
  std::string state() const
  {
    try {
      auto show = [](std::optional<uint32_t> v) { return v ? std::to_string(*v) : std::string("None"); };
      const uint32_t st = read_reg(regs::STATUS_ADDR).value_or(0);
      std::string bits;
      if (st & regs::STATUS_BUSY) bits = "busy";
      if (st & regs::STATUS_ERROR) bits += bits.empty() ? "error" : ", error";
      return "STATUS=" + hex(st) + " (" + (bits.empty() ? "idle" : bits) + ") FLAGS=" +
             hex(read_reg(regs::FLAGS_ADDR).value_or(0)) + " ATOMS_IN=" + show(read_reg(regs::ATOMS_IN_ADDR)) +
             " ATOMS_OUT=" + show(read_reg(regs::ATOMS_OUT_ADDR)) +
             " RECORDS_IN=" + show(read_reg(regs::RECORDS_IN_ADDR));
    } catch (const Error &e) {
      return std::string("registers unreadable: ") + e.what();
    }
  }

  // -- open ----------------------------------------------------------------------------------------
  void open()
  {
    const std::string where = "no dpfpga shell at " + prefix_, user = path("_user");
    user_.reset(::open(user.c_str(), O_RDWR | O_CLOEXEC));
    if (user_.fd < 0) {
      const int err = errno;
      if (err == ENOENT)
        throw Error(ErrorKind::Device, where + ": " + user +
                                           " does not exist (XDMA driver not loaded, wrong prefix, or card "
                                           "simulator not running: python -m sim.xdma_card)");
      throw Error(ErrorKind::Device, where + ": cannot open " + user + ": " + std::strerror(err));
    }
    const auto magic = read_reg(regs::MAGIC_ADDR);
    if (magic != regs::SHELL_MAGIC)
      throw Error(ErrorKind::Device, where + ": MAGIC at offset " + hex(regs::MAGIC_ADDR) + " reads " +
                                         (magic ? hex(*magic, 8) : "nothing (BAR too short)") + ", expected " +
                                         hex(regs::SHELL_MAGIC, 8) +
                                         " (another bitstream, or a register map that does not match the card)");
    const auto version = read_reg(regs::VERSION_ADDR);
    if (!version || std::find(std::begin(SUPPORTED_VERSIONS), std::end(SUPPORTED_VERSIONS), *version) ==
                        std::end(SUPPORTED_VERSIONS)) {
      std::string speaks;
      for (uint32_t v : SUPPORTED_VERSIONS) speaks += (speaks.empty() ? "" : ", ") + std::to_string(v);
      throw Error(ErrorKind::Device, prefix_ + ": shell version " + (version ? std::to_string(*version) : "None") +
                                         " is not supported (this host speaks " + speaks + ")");
    }
    const uint32_t lanes = read_reg(regs::LANES_ADDR).value_or(0);
    if (lanes < 1)
      throw Error(ErrorKind::Device, prefix_ + ": card has " + std::to_string(lanes) + " lane(s), expected >= 1");
    if (lanes > MAX_LANES)
      throw Error(ErrorKind::Device, prefix_ + ": card has " + std::to_string(lanes) + " lanes, more than the " +
                                         std::to_string(MAX_LANES) + " this host takes (a corrupt LANES register?)");
    lanes_ = int(lanes);
    stream_ = ResultStream(lanes_);
    std::string card_hash;
    for (unsigned k = 0; k < regs::HASH_WORDS; k++) {
      char b[9];
      std::snprintf(b, sizeof b, "%08x", read_reg(regs::MODEL_HASH0_ADDR + 4 * k).value_or(0));
      card_hash += b;
    }
    if (card_hash != model_hash_)
      throw Error(ErrorKind::Device, prefix_ + ": the card runs model " + card_hash + ", the host has model " +
                                         model_hash_ + "; load the matching bitstream or model file");
    // Non-blocking so that the threads can poll() with timeouts; opening a FIFO's write end that way
    // also fails at once (ENXIO) when nothing serves the card.
    auto open_stream = [&](Fd &fd, const char *which, int flags) {
      const std::string file = path(which);
      fd.reset(::open(file.c_str(), flags | O_NONBLOCK | O_CLOEXEC));
      const int err = errno;
      if (fd.fd < 0)
        throw Error(ErrorKind::Device, prefix_ + ": cannot open " + file + ": " +
                                           (err == ENXIO ? "nothing serves it" : std::strerror(err)));
    };
    open_stream(h2c_, "_h2c_0", O_WRONLY);
    open_stream(c2h_, "_c2h_0", O_RDONLY);
    stop_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (stop_.fd < 0 || wake_.fd < 0) {
      const int err = errno;
      throw Error(ErrorKind::Device, prefix_ + ": eventfd: " + std::strerror(err));
    }
    // The reset must not cut into another process's evaluation on a shared card: under the lock.
    lock(timeout_, true);
    try {
      soft_reset(std::min(timeout_, 30.0));
      write_reg(regs::CONTROL_ADDR, regs::CONTROL_ENABLE);
    } catch (...) {
      unlock();
      throw;
    }
    unlock();
    start_threads();
  }

  /* Soft reset, waiting (bounded) for the card to clear the self-clearing bit. */
  void soft_reset(double bound)
  {
    write_reg(regs::CONTROL_ADDR, regs::CONTROL_RESET);
    await_reset(bound);
  }

  void await_reset(double bound)
  {
    const auto t0 = Clock::now();
    while (read_reg(regs::CONTROL_ADDR).value_or(0) & regs::CONTROL_RESET) {
      if (since(t0) > bound)
        throw Error(ErrorKind::DeviceTimeout,
                    prefix_ + ": soft reset not acknowledged (CONTROL still " + hex(regs::CONTROL_RESET) + ")");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // -- the lock that lets processes share a card ---------------------------------------------------
  /* Waits at most `bound` seconds; then throws Error(DeviceTimeout) or (or_throw false) returns false. */
  bool lock(double bound, bool or_throw)
  {
    const auto t0 = Clock::now();
    // flock() has no timeout, so try and sleep; short sleeps, because the wait is the hand-over latency
    // between ranks that share a card (an evaluation on a card may take a millisecond).
    for (int us = 50;; us = std::min(2 * us, LOCK_POLL_MAX_US)) {
      if (::flock(user_.fd, LOCK_EX | LOCK_NB) == 0) {
        locked_ = true;
        return true;
      }
      const int err = errno;
      if (err != EWOULDBLOCK && err != EINTR) {
        if (!or_throw) return false;
        throw Error(ErrorKind::Device, prefix_ + ": cannot lock " + path("_user") + ": " + std::strerror(err));
      }
      if (since(t0) >= bound) {
        if (!or_throw) return false;
        throw Error(ErrorKind::DeviceTimeout, prefix_ + ": the card is in use by another process: its lock (" +
                                                  path("_user") + ") was not free within " + seconds(bound) + " s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(us));
    }
  }

  void unlock()
  {
    if (locked_ && user_.fd >= 0) ::flock(user_.fd, LOCK_UN);
    locked_ = false;
  }

  /* Chunks not collected, or a failure: the stream's position is unknown. */
  bool dirty()
  {
    std::lock_guard<std::mutex> g(mu_);
    return submitted_ != collected_ || failure_.has_value();
  }

  /* Back to a clean stream: threads stopped, queues emptied, card reset and enabled, threads started. */
  void resync()
  {
    stop_threads();
    {
      std::lock_guard<std::mutex> g(mu_);
      writes_.clear();
      stream_.clear();
      done_.clear();
      failure_.reset();
      submitted_ = collected_ = 0;
    }
    soft_reset(std::min(timeout_, 30.0));
    write_reg(regs::CONTROL_ADDR, regs::CONTROL_ENABLE);
    start_threads();
  }

  // -- threads -------------------------------------------------------------------------------------
  void start_threads()
  {
    uint64_t drain;
    while (::read(stop_.fd, &drain, sizeof drain) > 0) {
    }
    stopping_ = false;
    writer_ = std::thread(&XdmaDevice::writer, this);
    reader_ = std::thread(&XdmaDevice::reader, this);
  }

  void stop_threads()
  {
    {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
      write_cv_.notify_all();
    }
    const uint64_t one = 1;
    if (stop_.fd >= 0 && ::write(stop_.fd, &one, sizeof one) < 0) {
      // Cannot fail for an eventfd below its maximum; the threads also wake every POLL_MS.
    }
    // Both threads wake within POLL_MS (or a driver's transfer timeout on a real card).
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }

  void wake_reader()
  {
    const uint64_t one = 1;
    if (wake_.fd >= 0 && ::write(wake_.fd, &one, sizeof one) < 0) {
      // An eventfd write fails only at its maximum count, when the reader is awake anyway.
    }
  }

  /* Record the first failure and wake the collecting thread. */
  void fail_locked(std::string message)
  {
    if (!failure_) failure_ = std::move(message);
    done_cv_.notify_all();
  }

  void fail(std::string message)
  {
    std::lock_guard<std::mutex> g(mu_);
    fail_locked(std::move(message));
  }

  /* Waits until fd is ready for `events` (true), or POLL_MS passed or stop was asked (false). */
  bool wait_fd(int fd, short events)
  {
    pollfd p[2] = {{fd, events, 0}, {stop_.fd, POLLIN, 0}};
    const int n = ::poll(p, 2, POLL_MS);
    return n > 0 && !(p[1].revents & POLLIN) && p[0].revents;
  }

  void writer()
  {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);  // a reader that went away: EPIPE, not a dead process
    const size_t beat = 8 * size_t(lanes_), step = MAX_TRANSFER - MAX_TRANSFER % beat;
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
        if (!wait_fd(h2c_.fd, POLLOUT)) {
          std::lock_guard<std::mutex> g(mu_);
          if (stopping_) return;
          continue;
        }
        const ssize_t n = ::write(h2c_.fd, p, std::min(left, step));
        if (n < 0) {
          const int err = errno;  // before state() reads registers
          if (err == EAGAIN || err == EINTR) continue;
          fail(prefix_ + ": h2c write failed: " + std::strerror(err) + "; " + state());
          return;
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
      bool want_data;
      {
        std::lock_guard<std::mutex> g(mu_);
        if (stopping_) return;
        const size_t before = done_.size();
        const ResultStream::Break br = stream_.cut(done_);
        if (done_.size() != before) done_cv_.notify_all();
        if (br.kind == ResultStream::Break::NOT_A_HEADER)
          return fail_locked(prefix_ + ": stream broken: expected a result header, got word " + hex(br.word, 16) +
                             "; " + state());
        if (br.kind == ResultStream::Break::UNASKED)
          return fail_locked(prefix_ + ": the card sent " + std::to_string(br.bytes) + " bytes nobody asked for; " +
                             state());
        // Read only in our turn on a shared card: between begin() and end(), or with chunks in flight.
        want_data = held_ || stream_.busy();
      }
      pollfd p[3] = {{stop_.fd, POLLIN, 0}, {wake_.fd, POLLIN, 0}, {c2h_.fd, POLLIN, 0}};
      const int n = ::poll(p, want_data ? 3 : 2, POLL_MS);
      if (n <= 0) continue;
      if (p[0].revents & POLLIN) return;
      if (p[1].revents & POLLIN) {
        uint64_t drain;
        if (::read(wake_.fd, &drain, sizeof drain) < 0) {
          // EAGAIN: another wake-up already drained it.
        }
      }
      if (!want_data || !p[2].revents) continue;
      ssize_t got;
      int err;
      {
        // Decide and read under mu_: once end() has cleared held_ (before it lets go of the card),
        // no read of ours can start, so the next holder's results are never taken here.
        std::lock_guard<std::mutex> g(mu_);
        if (stopping_ || !(held_ || stream_.busy())) continue;
        got = ::read(c2h_.fd, scratch.get(), READ_SIZE);
        err = errno;
      }
      if (got < 0) {
        if (err == EAGAIN || err == EINTR) continue;
        return fail(prefix_ + ": c2h read failed: " + std::strerror(err) + "; " + state());
      }
      if (got == 0) return fail(prefix_ + ": the card closed its output stream; " + state());
      std::lock_guard<std::mutex> g(mu_);
      stream_.append(scratch.get(), size_t(got));
    }
  }

  // -- state ---------------------------------------------------------------------------------------
  const std::string prefix_;
  const int card_, cards_;
  const std::string model_hash_;
  const double timeout_;
  int lanes_ = 1;
  Fd user_, h2c_, c2h_;
  Fd stop_, wake_;        // eventfds: stop the threads; wake the reader (a chunk submitted, begin())
  bool locked_ = false;   // this device holds the card's flock (only the calling thread changes it)

  std::mutex mu_;         // guards everything below
  std::condition_variable write_cv_, done_cv_;
  bool stopping_ = false;
  bool held_ = false;     // between begin() and end()
  std::deque<std::vector<uint64_t>> writes_;  // chunks for the writer
  ResultStream stream_{1};                    // the output stream cut into chunks (lanes set at open)
  std::deque<std::vector<uint64_t>> done_;    // output words per chunk, in order
  std::optional<std::string> failure_;        // the first failure: every later collect() reports it
  uint64_t submitted_ = 0, collected_ = 0;
  std::thread writer_, reader_;
};

}  // namespace

std::unique_ptr<Device> open_xdma(const std::string &prefixes, const HostModel &model, const DeviceConfig &config)
{
  std::vector<std::string> cards;
  for (size_t at = 0;;) {
    const size_t comma = prefixes.find(',', at);
    cards.push_back(prefixes.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (cards.back().empty())
      throw Error(ErrorKind::Device, "xdma: empty card prefix in '" + prefixes + "' (expected P or P1,P2,...)");
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  if (config.node_rank < 0)
    throw Error(ErrorKind::Device, "xdma: node rank " + std::to_string(config.node_rank) + " is negative");
  const int card = config.node_rank % int(cards.size());
  return std::make_unique<XdmaDevice>(cards[size_t(card)], card, int(cards.size()), model, config);
}

}  // namespace dpfpga
