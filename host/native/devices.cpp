/* open_device(): a device string -> an opened in-process device (devices.h). */
#include "dpfpga/devices.h"

namespace dpfpga {

const char *device_kinds() { return "zero, cpu, xdma:PREFIX[,PREFIX...], rtl:HARNESS"; }

std::unique_ptr<Device> open_device(const std::string &spec, const HostModel &model, const DeviceConfig &config)
{
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon), arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (config.lanes < 1) throw Error(ErrorKind::Device, "lanes must be >= 1, got " + std::to_string(config.lanes));
  if (name == "zero" && arg.empty()) return open_zero(model, config);
  if (name == "cpu") return open_cpu(arg, model, config);
  if (name == "xdma") return open_xdma(arg.empty() ? "/dev/xdma0" : arg, model, config);
  if (name == "rtl" && !arg.empty()) return open_rtl(arg, model, config);
  throw Error(ErrorKind::Device, "unknown in-process device '" + spec + "'; choose from " + device_kinds());
}

}  // namespace dpfpga
