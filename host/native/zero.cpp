/* The zero device (host/devices/zero.py): every atom answered with zero energy and zero dE/dr_ij, in a
 * well-formed output stream (same tags, same record counts, no flags), so that everything around a
 * device runs as with a real one and its cost can be measured. */
#include "dpfpga/devices.h"
#include "dpfpga/wire.h"
#include "simd.h"

#include <deque>
#include <utility>

namespace dpfpga {
namespace {

namespace w = wire;

/* The answer to one header word (its tag, its count as the record count, zero energy, no flags). */
inline uint64_t answer_header(uint64_t word)
{
  return w::output_header::KIND_BITS | w::output_header::TAG.put(w::input_header::TAG.get(word)) |
         w::output_header::N.put(w::input_header::COUNT.get(word));
}

/* One lane: every word answered by its kind alone, a map the compiler vectorizes; the headers counted. */
DPFPGA_VECTOR_CLONES size_t answer_words(uint64_t *words, size_t n)
{
  size_t atoms = 0;
  for (size_t k = 0; k < n; k++) {
    const uint64_t word = words[k];
    const unsigned kind = w::kind(word);
    words[k] = kind == w::HEADER ? answer_header(word) : kind == w::RECORD ? w::output_record::KIND_BITS : 0;
    atoms += kind == w::HEADER;
  }
  return atoms;
}

/* Several lanes: a header beat's other words become pad, a record beat's words are answered by kind. */
size_t answer_beats(uint64_t *words, size_t n, size_t L)
{
  size_t atoms = 0;
  for (size_t b = 0; b < n; b += L) {
    if (w::kind(words[b]) == w::HEADER) {
      atoms++;
      words[b] = answer_header(words[b]);
      for (size_t s = 1; s < L; s++) words[b + s] = 0;
    } else {
      for (size_t s = 0; s < L; s++)
        words[b + s] = w::kind(words[b + s]) == w::RECORD ? w::output_record::KIND_BITS : 0;
    }
  }
  return atoms;
}

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
    const size_t atoms = L == 1 ? answer_words(words.data(), words.size()) : answer_beats(words.data(), words.size(), L);
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
