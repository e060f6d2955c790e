/* Inside the core's devices (not an interface): the small POSIX helpers the threaded devices share. */
#ifndef DPFPGA_POSIX_H
#define DPFPGA_POSIX_H

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dpfpga {
namespace posix {

using Clock = std::chrono::steady_clock;

inline double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/* "0x0000beef": a value in hex, at least `digits` digits. */
inline std::string hex(uint64_t v, int digits = 0)
{
  char b[32];
  std::snprintf(b, sizeof b, "0x%0*llx", digits, static_cast<unsigned long long>(v));
  return b;
}

/* Seconds as Python's `{:g}` writes them, for messages. */
inline std::string seconds(double s)
{
  char b[32];
  std::snprintf(b, sizeof b, "%g", s);
  return b;
}

/* A descriptor closed when it goes out of scope. */
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd &) = delete;
  Fd &operator=(const Fd &) = delete;
  ~Fd() { reset(); }
  void reset(int f = -1)
  {
    if (fd >= 0) ::close(fd);
    fd = f;
  }
};

}  // namespace posix
}  // namespace dpfpga

#endif
