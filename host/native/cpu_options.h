/* Inside the core (not an interface): the cpu device's pipeline for models with options
 * (contract.config.OPTIONS; imported DeePMD-kit and NVNMD models).
 *
 * model/reference.py's pipeline for one atom in scalar integer code, operation for operation as
 * tests/model/scalar_reference.py writes it (int64 values, __int128 sums), with the options:
 *   env_norm        the u-tables have one channel per centre type (channel ctype is the atom's s, h);
 *                   a table's coefficient row 0 is segment first_seg (the G tables start below zero);
 *   pad_slots       GR's first row gets (sel[t] - records of type t) times the empty slot's product, the
 *                   `pipeline_pad` integers (model.reference.padding_products);
 *   fit_activation  tanh: y = sign(z) T(|z|), phi' = T'(|z|) from the `act` table instead of tanh4;
 *   desc_band       D[a, k] = T[a, (a + k) mod M1] (NVNMD's banded descriptor), and dE/dGR to match;
 *   embed_table     nothing here: the G tables are made from the float model's tables as from nets.
 * Any other option name is refused.
 * cpu.cpp runs it, instead of its float64 kernels, for a model whose host model text has a
 * `pipeline_options` line: the same words, slower. */
#ifndef DPFPGA_CPU_OPTIONS_H
#define DPFPGA_CPU_OPTIONS_H

#include "pipeline.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace dpfpga {

class OptionsPipeline {
 public:
  /* Error(Model) naming what is missing or inconsistent in `p`. */
  OptionsPipeline(std::shared_ptr<const PipelineConstants> p, const std::vector<int> &sel);
  /* One atom that passed the stream checks (centre type and record types inside the type map, no type
   * over its sel): its energy word, one output record word per record, its flags (SATURATED,
   * R_BELOW_MIN). */
  void atom(int ctype, const uint64_t *rec, size_t n, int64_t &energy, uint64_t *out, uint32_t &flags) const;

 private:
  std::shared_ptr<const PipelineConstants> keep_;
  const PipelineConstants &p_;
  std::vector<int64_t> pad_;  // [centre type][neighbour type][M1] (pad_slots), else empty
  std::vector<int> sel_;
  int ntypes_ = 0, m1_ = 0, m2_ = 0;
  bool band_ = false;  // desc_band: D[a, k] = T[a, (a + k) mod M1] instead of T[a, k]
  const PipelineTable *s_ = nullptr, *h_ = nullptr, *act_ = nullptr;
  std::vector<const PipelineTable *> g_;
  PipelineFormat f_coord, f_s, f_h, f_ds, f_dh, f_R, f_G, f_dG, f_GR, f_D, f_Z, f_A, f_E, f_GA, f_DELTA, f_dD,
      f_dGR, f_dR, f_dGj, f_dS, f_dH, f_dU, f_F;
};

}  // namespace dpfpga

#endif
