/* Inside the core's devices (not an interface): a device's output byte stream cut into atoms and into
 * the chunks that were submitted (host/devices/base.py's contract).  An atom's results are a header
 * beat and ceil(n / lanes) record beats (n from the header, dpfpga/wire.h), so a reader needs nothing
 * but the header to know where the next atom starts.  Not thread-safe: the owner's lock guards it. */
#ifndef DPFPGA_STREAM_H
#define DPFPGA_STREAM_H

#include "dpfpga/wire.h"

#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

namespace dpfpga {

class ResultStream {
 public:
  explicit ResultStream(int lanes) : lanes_(size_t(lanes)), beat_(8 * size_t(lanes)) {}

  /* How the stream broke, for the device to word (with its own name and state). */
  struct Break {
    enum Kind { NONE, NOT_A_HEADER, UNASKED } kind = NONE;
    uint64_t word = 0;  // NOT_A_HEADER: the word where a result header should be
    size_t bytes = 0;   // UNASKED: bytes beyond every submitted chunk
  };

  /* A submitted chunk's atom count, in submission order. */
  void expect(size_t n_atoms) { chunks_.push_back(n_atoms); }
  /* A chunk awaits results: the reader should read. */
  bool busy() const { return chunk_left_ >= 0 || !chunks_.empty(); }
  void append(const uint8_t *data, size_t n) { buf_.insert(buf_.end(), data, data + n); }
  /* Forget everything (the device was reset). */
  void clear()
  {
    chunks_.clear();
    buf_.clear();
    start_ = pos_ = 0;
    chunk_left_ = -1;
  }

  /* Move every complete chunk's words to `done`, in order; say how the stream broke, if it did. */
  Break cut(std::deque<std::vector<uint64_t>> &done)
  {
    for (;;) {
      if (chunk_left_ < 0) {
        if (chunks_.empty()) break;
        chunk_left_ = long(chunks_.front());
        chunks_.pop_front();
      }
      if (chunk_left_ == 0) {
        std::vector<uint64_t> out((pos_ - start_) / 8);
        if (!out.empty()) std::memcpy(out.data(), buf_.data() + start_, pos_ - start_);
        done.push_back(std::move(out));
        chunk_left_ = -1;
        start_ = pos_;
        continue;
      }
      if (buf_.size() - pos_ < beat_) break;
      uint64_t head;
      std::memcpy(&head, buf_.data() + pos_, 8);
      if (wire::kind(head) != wire::HEADER) return Break{Break::NOT_A_HEADER, head, 0};
      const size_t n = size_t(wire::output_header::N.get(head));
      const size_t size = beat_ * (1 + (n + lanes_ - 1) / lanes_);
      if (buf_.size() - pos_ < size) break;
      pos_ += size;
      chunk_left_--;
    }
    if (chunk_left_ < 0 && buf_.size() > pos_) return Break{Break::UNASKED, 0, buf_.size() - pos_};
    if (start_ > (size_t(1) << 22)) {  // forget what is handed out: memory stays bounded by a chunk
      buf_.erase(buf_.begin(), buf_.begin() + long(start_));
      pos_ -= start_;
      start_ = 0;
    }
    return Break{};
  }

 private:
  size_t lanes_, beat_;
  std::deque<size_t> chunks_;  // atoms per submitted chunk not yet begun
  std::vector<uint8_t> buf_;   // buf_[0:start_] handed out, buf_[start_:pos_] the current chunk's atoms
  size_t start_ = 0, pos_ = 0;
  long chunk_left_ = -1;       // atoms the current chunk still waits for (-1: none begun)
};

}  // namespace dpfpga

#endif
