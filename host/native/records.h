/* Inside the core (not an interface): the per-pair kernels, which turn one centre's pairs into its
 * records' wire words and its output records into forces, and the choice between their two builds.
 *
 * Every kernel computes, for each pair it keeps,
 *
 *   q = floor(v * 2^frac + 0.5)            (model.assembly.quantize_displacements), inside [lo, hi]
 *   u = (qx^2 + qy^2) + qz^2 < x_min       (model.assembly.below_rmin: the s table's first input)
 *   word = RECORD | type | qx | qy | qz    (contract/wire.py input_record)
 *
 * and reports, without a branch per pair, whether any kept pair had a component outside the coord format
 * (`bad`) and how many fell below r_min (`close`, counted over the pairs with every component inside).
 * A component is first clamped into the format's range (a NaN to lo), as converting it to an integer
 * would be undefined outside; it was inside when the clamp left it unchanged (a NaN never is).
 *
 * Two builds of each: the portable one (plain C++, the specification) and, on x86-64 CPUs with
 * AVX-512 (F, DQ, VL), one that takes 8 candidates per step (a compress for the kept ones).  Both
 * compute the same bits: IEEE operations in the same order, exact integer ones; tests run both. */
#ifndef DPFPGA_RECORDS_H
#define DPFPGA_RECORDS_H

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace dpfpga {
namespace records {

/* What the kernels need of the model and the evaluation. */
struct Consts {
  double scale = 1.0;              // 2^coord_frac
  double lo = 0.0, hi = 0.0;       // floor(v * scale + 0.5) in [lo, hi) <=> inside the coord format
  double top = 0.0;                // the largest double below hi: the clamp's upper end
  double x_min = 0.0;              // u below this: below r_min
  const int32_t *types = nullptr;  // every atom's model type
  bool range_fits = false;         // every pair inside rcut fits the coord format (fits_coord_format)
  double r2_near = INFINITY;       // |r_ij|^2 (Å^2) from which u cannot be below x_min (near_bound)
};

/* A bound on |r_ij|^2 (Å^2) at and above which a pair's u is surely at or above x_min: the kernels
 * compute u only below it. */
double near_bound(const Consts &c);

/* Whether every component of a pair inside rcut quantizes inside the coord format (the usual case: a
 * format narrower than the cutoff is a model's own choice, and then the kernels test each pair). */
bool fits_coord_format(double rcut, const Consts &c);

/* What a kernel found among the pairs it kept. */
struct Found {
  size_t kept = 0;   // pairs inside rcut, written
  size_t close = 0;  // of those, below r_min (all components inside the format)
  bool bad = false;  // one has a component outside the coord format
  bool self = false; // the candidates list the centre itself (the neighbour-list kernel)
};

/* The kernels may write this many words (and neighbour indices) past what they keep: room to leave. */
constexpr size_t SLACK = 8;

/* An image of an atom in one int64 (the cell list's pairs kept between evaluations): the atom in the
 * low IMAGE_SHIFT bits, the row of its shift in a table above them. */
constexpr unsigned IMAGE_SHIFT = 40;
constexpr int64_t ATOM_MASK = (int64_t(1) << IMAGE_SHIFT) - 1;

/* A neighbour list's candidates of centre i (positions x, nall * 3): those with
 * (dx*dx + dy*dy) + dz*dz < rc2, d = x_j - x_i, kept in list order: their words to `out`, their indices
 * to `nbr` (each with room for n + SLACK).  With `shifts` (4 doubles per row: x, y, z, 0), each
 * candidate is an image (IMAGE_SHIFT) and d = (x_j - x_i) + its row's shift, and the centre's own images
 * are no fault. */
Found listed(int64_t i, const int64_t *cand, size_t n, const double *x, double rc2, const Consts &c, uint64_t *out,
             int64_t *nbr, const double *shifts = nullptr);
/* The same for an MD code's own int indices (half the bytes to read). */
Found listed(int64_t i, const int32_t *cand, size_t n, const double *x, double rc2, const Consts &c, uint64_t *out,
             int64_t *nbr);

/* A cell list's candidates for one centre at pi (structure of arrays: positions p, their image's shift
 * s in the caller's cell, j: the atom's index or any int64 the caller wants back per pair; home = the
 * atom's index where the image is unshifted, else -1): r = (p - pi) + s, the Python path's vector, kept
 * when (x*x + y*y) + z*z < rc2, except the centre's own unshifted image.  The kept pairs go to oj, ox,
 * oy, oz (each with room for n + SLACK), in candidate order.  Returns how many. */
size_t images(size_t n, const double *px, const double *py, const double *pz, const double *sx, const double *sy,
              const double *sz, const int64_t *j, const int64_t *home, const double *pi, double rc2, int64_t centre,
              int64_t *oj, double *ox, double *oy, double *oz);

/* n pairs already kept (structure of arrays: r_ij, the neighbours' indices): their words to `out`. */
Found given(size_t n, const double *dx, const double *dy, const double *dz, const int64_t *j, const Consts &c,
            uint64_t *out);

/* How many of n record words carry neighbour type t. */
size_t count_type(const uint64_t *words, size_t n, unsigned t);

/* The forces of one centre's n output records (wire output_record): f_centre += dE/dr_ij and
 * f_j -= dE/dr_ij for each record's neighbour j, exact in int64, in an array of `stride` int64 per
 * atom: force_stride() at the start of an evaluation, 4 (x, y, z and a pad lane: one vector per atom)
 * for the vector build, else 3. */
void scatter_forces(int64_t centre, size_t n, const uint64_t *out, const int64_t *nbr, int64_t *forces,
                    size_t stride);
/* The same, and w9 (row-major 3 x 3) += sum of r_ij (x) dE/dr_ij over the records, r_ij read from their
 * input words `in` (coord format): each product below 2^37, their sum over n < 2^10 records inside int64. */
void scatter_forces_virial(int64_t centre, size_t n, const uint64_t *out, const uint64_t *in, const int64_t *nbr,
                           int64_t *forces, size_t stride, int64_t *w9);
size_t force_stride();

/* Which build the kernels run: "avx512" where the CPU has it and it is not switched off, else
 * "portable".  use_vector(false) switches to the portable build (tests compare the two); it returns
 * the build that ran before. */
const char *build();
const char *use_vector(bool on);

}  // namespace records
}  // namespace dpfpga

#endif
