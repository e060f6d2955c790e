/* Devices the native core drives in-process (their Python counterparts are in host/devices/):
 *
 *   zero          answers every atom with zero energy and dE/dr, well framed (host/devices/zero.py)
 *   xdma:P[,P2..] a card through the XDMA driver's character devices under prefix P (host/devices/xdma.py);
 *                 with several prefixes, rank r of a node drives card r % cards, and the ranks that
 *                 share a card take turns, one evaluation at a time (a lock on its user file)
 *   rtl:EXE       the standalone Verilator harness EXE behind two pipes (host/devices/rtl.py)
 *   cpu           model/reference.py's fixed-point pipeline computed here, bit-exact, on `threads` threads
 *                 (cpu.cpp; the model text must carry its pipeline_* lines); cpu:generic forces the
 *                 portable kernels instead of AVX2+FMA
 *
 * open_device() returns an opened device; its errors are Error(Device) naming the device. */
#ifndef DPFPGA_DEVICES_H
#define DPFPGA_DEVICES_H

#include "dpfpga/core.h"

#include <memory>
#include <string>

namespace dpfpga {

struct DeviceConfig {
  int lanes = 1;            // zero, rtl: words per beat (a card reports its own)
  double timeout = 60.0;    // s: open()'s bound on a card's soft reset; a stopped card's bound
  int node_rank = 0;        // this process's rank among the node's ranks (card = node_rank % cards)
  long stall_cycles = 5000000;  // rtl: harness cycles without progress before it gives up
  int threads = 0;          // cpu: threads per device; 0 = the cores this process may run on (sched_getaffinity)
};

std::unique_ptr<Device> open_device(const std::string &spec, const HostModel &model, const DeviceConfig &config);

/* Device kinds, for messages and `--help`: "zero, cpu, xdma:PREFIX[,PREFIX...], rtl:HARNESS". */
const char *device_kinds();

/* Implemented in zero.cpp, cpu.cpp, xdma.cpp, rtl.cpp. */
std::unique_ptr<Device> open_zero(const HostModel &model, const DeviceConfig &config);
std::unique_ptr<Device> open_cpu(const std::string &option, const HostModel &model, const DeviceConfig &config);
std::unique_ptr<Device> open_xdma(const std::string &prefixes, const HostModel &model, const DeviceConfig &config);
std::unique_ptr<Device> open_rtl(const std::string &harness, const HostModel &model, const DeviceConfig &config);

}  // namespace dpfpga

#endif
