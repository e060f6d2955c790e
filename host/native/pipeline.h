/* Inside the core (not an interface): the fixed-point pipeline's constants as the host model text
 * carries them (host/native.py host_model_text, its `pipeline_*` lines), read by HostModel::parse and
 * used by the cpu device (cpu.cpp), which checks them when it opens.
 *
 * Every value is an integer of the model file (contract/modelfile.py QuantizedModel), unchanged:
 *
 *   pipeline_config M1 M2 NORM_SHIFT DESC_SHIFT
 *   pipeline_options NAME...                           the model's options, only when it has any
 *                                                      (contract.config.OPTIONS; cpu.cpp CpuModel)
 *   pipeline_format NAME BITS FRAC SIGNED              one per format (coord, s, h, R, G, ..., F)
 *   pipeline_table NAME X_FRAC SEG_SHIFT XI_BITS X_MIN NSEG NCH  COEF OUT DOUT (each BITS FRAC SIGNED)
 *   pipeline_table_coef NAME C...                      NSEG * NCH * 3 values, (segment, channel, a b c)
 *                                                      NAME: s, h, g0, g1, ... (per neighbour type),
 *                                                      act (fit_activation tanh)
 *   pipeline_table_first_seg NAME K                    the table's first segment, when not 0
 *   pipeline_pad CT T V...                             pad_slots: M1 values, an empty slot's product
 *   pipeline_layer T K N_IN N_OUT WFRAC RESNET         fitting layer K of centre type T
 *   pipeline_layer_w T K W...                          N_IN * N_OUT values, row-major (in, out)
 *   pipeline_layer_b T K B...                          N_OUT values, format Z
 *   pipeline_out T WFRAC W...                          output weights of centre type T */
#ifndef DPFPGA_PIPELINE_H
#define DPFPGA_PIPELINE_H

#include "dpfpga/core.h"

#include <cstdint>
#include <istream>
#include <map>
#include <string>
#include <vector>

namespace dpfpga {

struct PipelineFormat {
  int bits = 0, frac = 0;
  bool is_signed = true;
  int64_t lo() const { return is_signed ? -(int64_t(1) << (bits - 1)) : 0; }
  int64_t hi() const { return is_signed ? (int64_t(1) << (bits - 1)) - 1 : (int64_t(1) << bits) - 1; }
  /* |v| <= 2^magnitude() for every v of the format. */
  int magnitude() const { return is_signed ? bits - 1 : bits; }
  std::string describe() const
  {
    return (is_signed ? "s" : "u") + std::to_string(bits) + "." + std::to_string(frac);
  }
};

/* contract.modelfile.Table */
struct PipelineTable {
  bool given = false;
  int x_frac = 0, seg_shift = 0, xi_bits = 0, nseg = 0, nch = 0;
  int64_t x_min = 0, first_seg = 0;
  PipelineFormat coef, out, dout;
  std::vector<int64_t> values;  // nseg * nch * 3: (segment, channel, a b c)
};

/* contract.modelfile.Layer */
struct PipelineLayer {
  bool given = false;
  int n_in = 0, n_out = 0, wfrac = 0;
  bool resnet = false;
  std::vector<int64_t> w;  // n_in * n_out, row-major
  std::vector<int64_t> b;  // n_out
};

struct PipelineConstants {
  bool config_given = false;
  int m1 = 0, m2 = 0, norm_shift = 0, desc_shift = 0;
  std::map<std::string, PipelineFormat> formats;
  std::map<std::string, PipelineTable> tables;  // s, h, g0, g1, ...
  std::vector<std::vector<PipelineLayer>> fit;  // [centre type][layer]
  std::vector<std::vector<int64_t>> out_w;      // [centre type]
  std::vector<int> out_wfrac;
  std::vector<bool> out_given;
  std::vector<std::string> options;  // pipeline_options: env_norm, pad_slots, fit_activation
  std::vector<int64_t> pad;          // pipeline_pad: [centre type][neighbour type][M1], frac R + G
};

/* One `pipeline_*` line of the host model text (its key already read from `values`) into `p`;
 * Error(Model) naming the line when it does not parse. */
void parse_pipeline_line(PipelineConstants &p, const std::string &key, std::istream &values, const std::string &line);

}  // namespace dpfpga

#endif
