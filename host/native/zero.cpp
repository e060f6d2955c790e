/* The zero device (host/devices/zero.py): every atom answered with zero energy and zero dE/dr_ij, in a
 * well-formed output stream (same tags, same record counts, no flags), so that everything around a
 * device runs as with a real one and its cost can be measured. */
#include "dpfpga/devices.h"
#include "dpfpga/wire.h"

#include <deque>
#include <utility>

namespace dpfpga {
namespace {

namespace w = wire;

class ZeroDevice : public Device {
 public:
  explicit ZeroDevice(int lanes) : lanes_(lanes) {}
  std::string name() const override { return "zero"; }
  int lanes() const override { return lanes_; }

  void submit(std::vector<uint64_t> words, size_t n_atoms) override
  {
    if (words.size() % size_t(lanes_) != 0)
      throw Error(ErrorKind::Device, "zero: a chunk of " + std::to_string(words.size()) + " words is not whole beats");
    queue_.emplace_back(std::move(words), n_atoms);
  }

  /* The work happens here: the answer to the oldest chunk, atom by atom. */
  std::vector<uint64_t> collect(double) override
  {
    if (queue_.empty()) throw Error(ErrorKind::Device, "zero: collect() without a chunk in flight");
    auto [words, n_atoms] = std::move(queue_.front());
    queue_.pop_front();
    // The answer has the question's framing, beat for beat: written over it, in place.
    const size_t L = size_t(lanes_);
    size_t atoms = 0;
    for (size_t b = 0; b < words.size(); b += L) {
      const uint64_t word = words[b];
      if (w::kind(word) == w::HEADER) {
        atoms++;
        const uint64_t count = w::input_header::COUNT.get(word), tag = w::input_header::TAG.get(word);
        words[b] = w::output_header::KIND_BITS | w::output_header::TAG.put(tag) | w::output_header::N.put(count);
        for (size_t s = 1; s < L; s++) words[b + s] = 0;
      } else {
        for (size_t s = 0; s < L; s++)
          words[b + s] = w::kind(words[b + s]) == w::RECORD ? w::output_record::KIND_BITS : 0;
      }
    }
    if (atoms != n_atoms)
      throw Error(ErrorKind::Device, "zero: chunk announces " + std::to_string(n_atoms) + " atoms, stream has " +
                                         std::to_string(atoms));
    return std::move(words);
  }

 private:
  int lanes_;
  std::deque<std::pair<std::vector<uint64_t>, size_t>> queue_;
};

}  // namespace

std::unique_ptr<Device> open_zero(const HostModel &, const DeviceConfig &config)
{
  return std::make_unique<ZeroDevice>(config.lanes);
}

}  // namespace dpfpga
