// Standalone Verilator harness for the generated pipeline (no cocotb: full Verilator speed).
//
// Reads the pipeline's input stream from stdin and writes its output stream to stdout, both as raw
// little-endian 64-bit wire words (contract/wire.py), `lanes` words per beat.  It works on a file
// (`harness < in.bin > out.bin`) and as a long-lived streaming device behind pipes: it blocks on
// stdin only when no atom is in flight, after flushing every output beat, so a host that writes a
// chunk and then waits for its results never deadlocks with it.
//
// Usage: pipeline_harness --lanes L [--idle P] [--backpressure P] [--seed S] [--stall-cycles N]
//                         [--stats FILE]
//   --idle P          probability of withholding an available input beat for a cycle
//   --backpressure P  probability of output ready = 0 in a cycle
//   --stall-cycles N  atoms in flight but no output beat for N cycles: stop with exit code 3
//   --stats FILE      JSON at exit: cycles, beats, atoms, wall seconds, error
//
// Exit codes: 0 clean end of input with every atom answered, 2 bad usage/input, 3 stall.
#include "Vdpfpga_pipeline.h"
#include "dpfpga/wire.h"  // generated from contract/wire.py (python -m contract headers)
#include "verilated.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// Verilator escapes the "__" of Amaranth's port names (i__valid) as "___05F".

// The stream payload is `lanes` x 64 bits: a QData for one lane, a VlWide (32-bit words) for more.
void put_payload(QData& port, const uint64_t* w) { port = w[0]; }
template <std::size_t N>
void put_payload(VlWide<N>& port, const uint64_t* w) { std::memcpy(port.data(), w, N * 4); }
void get_payload(const QData& port, uint64_t* w) { w[0] = port; }
template <std::size_t N>
void get_payload(const VlWide<N>& port, uint64_t* w) { std::memcpy(w, port.data(), N * 4); }

// Deterministic per-cycle coin flips (xorshift64*), independent of the C library.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ULL + 1) {}
    double uniform() {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        return double((s * 0x2545F4914F6CDD1DULL) >> 11) / double(1ULL << 53);
    }
};

// Input side: bytes from stdin, cut into beats; reads never block while atoms are in flight.
struct Input {
    int lanes;
    std::vector<uint8_t> buf;
    size_t head = 0;
    bool eof = false;
    explicit Input(int l) : lanes(l) {}
    size_t beat_bytes() const { return size_t(lanes) * 8; }
    bool has_beat() const { return buf.size() - head >= beat_bytes(); }
    // wait: block until some input or EOF arrives; otherwise take only what is already there.
    void fill(bool wait) {
        if (eof) return;
        pollfd p{0, POLLIN, 0};
        if (poll(&p, 1, wait ? -1 : 0) <= 0) return;
        if (head > (1u << 20)) { buf.erase(buf.begin(), buf.begin() + long(head)); head = 0; }
        uint8_t tmp[1 << 16];
        ssize_t n = read(0, tmp, sizeof tmp);
        if (n <= 0) { eof = true; return; }
        buf.insert(buf.end(), tmp, tmp + n);
    }
    const uint64_t* beat() const { return reinterpret_cast<const uint64_t*>(buf.data() + head); }
    void pop() { head += beat_bytes(); }
    size_t leftover() const { return buf.size() - head; }
};

struct Output {
    std::vector<uint64_t> pending;
    // The reader on the other side of the pipe consumes concurrently, so large batches go out early.
    void push(const uint64_t* w, int lanes) {
        pending.insert(pending.end(), w, w + lanes);
        if (pending.size() >= (1u << 16)) flush();
    }
    void flush() {
        if (pending.empty()) return;
        fwrite(pending.data(), 8, pending.size(), stdout);
        fflush(stdout);
        pending.clear();
    }
};

namespace wire = dpfpga::wire;

}  // namespace

int main(int argc, char** argv) {
    int lanes = 1;
    double idle = 0.0, backpressure = 0.0;
    uint64_t seed = 0, stall_cycles = 2000000;
    std::string stats_path;
    for (int k = 1; k < argc; ++k) {
        std::string a = argv[k];
        auto next = [&]() -> const char* {
            if (k + 1 >= argc) { fprintf(stderr, "pipeline_harness: %s needs a value\n", a.c_str()); exit(2); }
            return argv[++k];
        };
        if (a == "--lanes") lanes = atoi(next());
        else if (a == "--idle") idle = atof(next());
        else if (a == "--backpressure") backpressure = atof(next());
        else if (a == "--seed") seed = strtoull(next(), nullptr, 10);
        else if (a == "--stall-cycles") stall_cycles = strtoull(next(), nullptr, 10);
        else if (a == "--stats") stats_path = next();
        else { fprintf(stderr, "pipeline_harness: unknown argument %s\n", a.c_str()); return 2; }
    }
    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vdpfpga_pipeline>(ctx.get());
    if (int(sizeof(top->i___05Fpayload)) < lanes * 8) {
        fprintf(stderr, "pipeline_harness: --lanes %d does not match the design's payload\n", lanes);
        return 2;
    }
    Input in(lanes);
    Output out;
    Rng rng(seed);
    std::vector<uint64_t> word(static_cast<size_t>(lanes));

    // Reset for a few cycles.
    top->rst = 1; top->i___05Fvalid = 0; top->o___05Fready = 0;
    for (int k = 0; k < 4; ++k) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;

    uint64_t cycle = 0, beats_in = 0, beats_out = 0, atoms_in = 0, atoms_out = 0, last_out = 0;
    uint64_t records_owed = 0;  // records still due for the last output header
    bool presenting = false;
    const char* error = nullptr;
    auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        bool busy = atoms_out < atoms_in || records_owed > 0;
        if (!in.has_beat() && !in.eof) {
            if (!busy) out.flush();           // the host may be waiting for these before it writes more
            if (!busy || (cycle & 63) == 0) in.fill(!busy);
        }
        if (!in.has_beat() && in.eof && !busy && !presenting) break;
        if (busy && cycle - last_out > stall_cycles) { error = "stall"; break; }

        // Drive this cycle's inputs (after the previous rising edge).
        if (!presenting && in.has_beat()) presenting = idle == 0.0 || rng.uniform() >= idle;
        top->i___05Fvalid = presenting;
        if (presenting) put_payload(top->i___05Fpayload, in.beat());
        top->o___05Fready = backpressure == 0.0 || rng.uniform() >= backpressure;
        top->clk = 0;
        top->eval();
        // Handshakes happen at the coming edge: sample them with the settled combinational values.
        if (presenting && top->i___05Fready) {
            if (wire::kind(in.beat()[0]) == wire::HEADER) ++atoms_in;
            in.pop();
            presenting = false;
            ++beats_in;
        }
        if (top->o___05Fvalid && top->o___05Fready) {
            get_payload(top->o___05Fpayload, word.data());
            for (int l = 0; l < lanes; ++l) {
                unsigned kind = wire::kind(word[size_t(l)]);
                if (kind == wire::HEADER) { ++atoms_out; records_owed = wire::output_header::N.get(word[size_t(l)]); }
                else if (kind == wire::RECORD && records_owed) --records_owed;
            }
            out.push(word.data(), lanes);
            ++beats_out;
            last_out = cycle;
        }
        top->clk = 1;
        top->eval();
        ++cycle;
    }
    out.flush();
    top->final();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!error && in.leftover()) error = "input ends inside a beat";
    if (!stats_path.empty()) {
        FILE* f = fopen(stats_path.c_str(), "w");
        if (f) {
            fprintf(f, "{\"cycles\": %llu, \"beats_in\": %llu, \"beats_out\": %llu, \"atoms_in\": %llu, "
                       "\"atoms_out\": %llu, \"wall_seconds\": %.6f, \"error\": %s%s%s}\n",
                    (unsigned long long)cycle, (unsigned long long)beats_in, (unsigned long long)beats_out,
                    (unsigned long long)atoms_in, (unsigned long long)atoms_out, wall,
                    error ? "\"" : "", error ? error : "null", error ? "\"" : "");
            fclose(f);
        }
    }
    if (error) { fprintf(stderr, "pipeline_harness: %s after %llu cycles\n", error, (unsigned long long)cycle); }
    return error ? (std::strcmp(error, "stall") == 0 ? 3 : 2) : 0;
}
