/* The native core as a Python extension (pybind11): host/native.py loads it, and wraps its results and
 * errors in the Python path's types.
 *
 *   Model(text)                                     HostModel::parse (host/native.py host_model_text)
 *   open_device(spec, model, lanes, timeout, node_rank, stall_cycles, threads) -> Device   (devices.h)
 *   evaluate_neighbors(model, device, x, types, nlocal, numneigh, neighbors, ids, **options) -> dict
 *                                                   (options: chunk_atoms, strict, allow_below_rmin,
 *                                                    atomic_virial, timeout, progress(n) per chunk)
 *   evaluate_periodic(model, device, positions, types, cell, basis, op, origin, pbc, **options) -> dict
 *
 * `device` is a native Device or any Python device (host/devices/base.py: submit, collect, lanes,
 * depth, name), which the core then drives through the interpreter.  The GIL is released while the
 * core works and taken back only to call a Python device.  Errors: NativeError(kind, message), kind the
 * name of the Python exception it stands for (host/native.py raises that one). */
#include "dpfpga/core.h"
#include "dpfpga/devices.h"
#include "records.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

namespace py = pybind11;
using namespace dpfpga;

namespace {

const char *kind_name(ErrorKind k)
{
  switch (k) {
    case ErrorKind::Structure: return "StructureError";
    case ErrorKind::NeighborOverflow: return "NeighborOverflowError";
    case ErrorKind::InputRange: return "InputRangeError";
    case ErrorKind::CloseContact: return "CloseContactError";
    case ErrorKind::DeviceFlag: return "DeviceFlagError";
    case ErrorKind::Type: return "KeyError";
    case ErrorKind::Device: return "DeviceError";
    case ErrorKind::DeviceTimeout: return "DeviceTimeout";
    case ErrorKind::Model: return "ModelFileError";
  }
  return "RuntimeError";
}

/* A numpy array that owns a vector's buffer (no copy). */
template <typename T>
py::array_t<T> to_array(std::vector<T> &&v, std::vector<py::ssize_t> shape)
{
  auto *owned = new std::vector<T>(std::move(v));
  py::capsule free_it(owned, [](void *p) { delete static_cast<std::vector<T> *>(p); });
  return py::array_t<T>(shape, owned->data(), free_it);
}

/* A Python device driven by the core: every call takes the GIL. */
class PyDevice : public Device {
 public:
  explicit PyDevice(py::object obj) : obj_(std::move(obj))
  {
    name_ = py::str(obj_.attr("name"));
    lanes_ = obj_.attr("lanes").cast<int>();
    depth_ = py::hasattr(obj_, "depth") ? obj_.attr("depth").cast<int>() : 2;
  }
  std::string name() const override { return name_; }
  int lanes() const override { return lanes_; }
  int depth() const override { return depth_; }
  void submit(std::vector<uint64_t> words, size_t n_atoms) override
  {
    py::gil_scoped_acquire gil;
    const py::ssize_t beats = py::ssize_t(words.size() / size_t(lanes_));
    obj_.attr("submit")(to_array(std::move(words), {beats, py::ssize_t(lanes_)}), n_atoms);
  }
  std::vector<uint64_t> collect(double timeout) override
  {
    py::gil_scoped_acquire gil;
    auto out = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>(obj_.attr("collect")(timeout));
    return std::vector<uint64_t>(out.data(), out.data() + out.size());
  }

 private:
  py::object obj_;
  std::string name_;
  int lanes_ = 1, depth_ = 2;
};

/* A native device owned by Python; after close() every use is a DeviceError, not a null pointer. */
struct NativeDevice {
  std::unique_ptr<Device> dev;
  Core::Buffers buffers;  // the last evaluation's, for the next (Core::Buffers)
  Device &get()
  {
    if (!dev) throw Error(ErrorKind::Device, "device is closed");
    return *dev;
  }
};

Options options_from(size_t chunk_atoms, bool strict, bool allow_below_rmin, bool atomic_virial, double timeout,
                     py::object progress)
{
  Options o;
  if (!progress.is_none()) {
    // Copied along with Options while the GIL is released: hold a plain handle (the caller's argument
    // keeps the callable alive for the call) and take the GIL only to call it.
    PyObject *fn = progress.ptr();
    o.on_chunk = [fn](size_t n) {
      py::gil_scoped_acquire gil;
      py::handle callable(fn);
      callable(n);
    };
  }
  o.chunk_atoms = chunk_atoms;
  o.strict = strict;
  o.allow_below_rmin = allow_below_rmin;
  o.atomic_virial = atomic_virial;
  o.timeout = timeout;
  return o;
}

py::dict result_dict(Result &&r, size_t natoms)
{
  py::dict d;
  d["energy"] = r.energy;
  d["forces"] = to_array(std::move(r.forces), {py::ssize_t(natoms), 3});
  // W is exact in __int128: handed over as (high, low) 64-bit halves, joined in Python.
  py::list virial;
  for (const __int128 v : r.virial) virial.append(py::make_tuple(int64_t(v >> 64), uint64_t(v)));
  d["virial"] = virial;
  const py::ssize_t nc = py::ssize_t(r.e_atom.size());
  d["e_atom"] = to_array(std::move(r.e_atom), {nc});
  d["flags"] = to_array(std::move(r.flags), {nc});
  if (!r.s_atom.empty()) d["s_atom"] = to_array(std::move(r.s_atom), {py::ssize_t(natoms), 3, 3});
  d["below_rmin"] = r.below_rmin;
  d["pair_list"] = r.pair_list == 1 ? "built" : r.pair_list == 2 ? "reused" : r.pair_list == 3 ? "searched" : "";
  py::dict t;
  t["neighbors_encode"] = r.timings.neighbors_encode;
  t["device_wait"] = r.timings.device_wait;
  t["assemble"] = r.timings.assemble;
  t["total"] = r.timings.total;
  d["timings"] = t;
  return d;
}

/* One evaluation: the core on `device` (native, or a Python one through the interpreter) without the
 * GIL, its integers as a dict. */
template <typename F>
py::dict evaluate(const HostModel &model, py::object device, const Options &o, size_t natoms, F &&compute)
{
  Result r;
  if (py::isinstance<NativeDevice>(device)) {
    NativeDevice &nd = device.cast<NativeDevice &>();
    Device &dev = nd.get();
    py::gil_scoped_release nogil;
    Core core(model, dev, o, std::move(nd.buffers));
    try {
      compute(core, r);
    } catch (...) {
      nd.buffers = core.release();
      throw;
    }
    nd.buffers = core.release();
  } else {
    PyDevice adapter(device);
    py::gil_scoped_release nogil;
    Core core(model, adapter, o);
    compute(core, r);
  }
  return result_dict(std::move(r), natoms);
}

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

}  // namespace

PYBIND11_MODULE(_dpfpga_native, m)
{
  m.doc() = "dpfpga native host core (host/native/); use it through host.native";
  static py::exception<Error> native_error(m, "NativeError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error &e) {
      py::object args = py::make_tuple(kind_name(e.kind), e.what());
      PyErr_SetObject(native_error.ptr(), args.ptr());
    }
  });

  py::class_<HostModel>(m, "Model")
      .def(py::init(&HostModel::parse), py::arg("text"))
      .def_readonly("hash", &HostModel::hash)
      .def_readonly("rcut", &HostModel::rcut)
      .def_readonly("type_map", &HostModel::type_map)
      .def_readonly("sel", &HostModel::sel);

  py::class_<NativeDevice>(m, "Device")
      .def_property_readonly("name", [](NativeDevice &d) { return d.get().name(); })
      .def_property_readonly("lanes", [](NativeDevice &d) { return d.get().lanes(); })
      .def_property_readonly("depth", [](NativeDevice &d) { return d.get().depth(); })
      .def("describe", [](NativeDevice &d) { return d.get().describe(); })
      .def("begin", [](NativeDevice &d) { py::gil_scoped_release nogil; d.get().begin(); })
      .def("end", [](NativeDevice &d) { py::gil_scoped_release nogil; d.get().end(); })
      .def("submit",
           [](NativeDevice &d, carray<uint64_t> words, size_t n_atoms) {
             std::vector<uint64_t> v(words.data(), words.data() + words.size());
             py::gil_scoped_release nogil;
             d.get().submit(std::move(v), n_atoms);
           },
           py::arg("words"), py::arg("n_atoms"))
      .def("collect",
           [](NativeDevice &d, std::optional<double> timeout) {
             std::vector<uint64_t> out;
             {
               py::gil_scoped_release nogil;
               out = d.get().collect(timeout.value_or(1e9));
             }
             const int lanes = d.get().lanes();
             const py::ssize_t beats = py::ssize_t(out.size() / size_t(lanes));
             return to_array(std::move(out), {beats, py::ssize_t(lanes)});
           },
           py::arg("timeout") = py::none())
      // Destructors join threads and reap processes: without the GIL, so that Python threads (a card
      // simulator in the same process) keep running meanwhile.
      .def("close", [](NativeDevice &d) {
        std::unique_ptr<Device> gone = std::move(d.dev);
        py::gil_scoped_release nogil;
        gone.reset();
      });

  m.def("open_device",
        [](const std::string &spec, const HostModel &model, int lanes, double timeout, int node_rank,
           long stall_cycles, int threads) {
          DeviceConfig c;
          c.threads = threads;
          c.lanes = lanes;
          c.timeout = timeout;
          c.node_rank = node_rank;
          c.stall_cycles = stall_cycles;
          py::gil_scoped_release nogil;
          NativeDevice d;
          d.dev = open_device(spec, model, c);
          return d;
        },
        py::arg("spec"), py::arg("model"), py::arg("lanes") = 1, py::arg("timeout") = 60.0, py::arg("node_rank") = 0,
        py::arg("stall_cycles") = 5000000L, py::arg("threads") = 0);

  m.def(
      "record_kernels",
      [](std::optional<bool> vector) {
        return std::string(vector ? records::use_vector(*vector) : records::build());
      },
      py::arg("vector") = py::none(),
      "The build of the record kernels that runs (\"avx512\" or \"portable\"); with `vector`, switch the "
      "vector build on or off for this process and say which ran before.");

  m.def("evaluate_neighbors",
        [](const HostModel &model, py::object device, carray<double> x, carray<int32_t> types, size_t nlocal,
           carray<int64_t> numneigh, py::array neighbor_array, std::optional<carray<int64_t>> ids,
           size_t chunk_atoms, bool strict, bool allow_below_rmin, bool atomic_virial, double timeout,
           py::object progress) {
          Domain d;
          d.nall = size_t(types.size());
          d.nlocal = nlocal;
          if (size_t(x.size()) != 3 * d.nall || size_t(numneigh.size()) != nlocal)
            throw Error(ErrorKind::Structure, "positions, types and neighbour counts do not match");
          d.x = x.data();
          d.types = types.data();
          d.numneigh = numneigh.data();
          // int32 entries (an MD code's own) are read as they are; any other integers as int64.
          carray<int32_t> neighbors32;
          carray<int64_t> neighbors64;
          size_t entries;
          if (neighbor_array.dtype().is(py::dtype::of<int32_t>())) {
            neighbors32 = carray<int32_t>::ensure(neighbor_array);
            d.neighbors32 = neighbors32.data(), entries = size_t(neighbors32.size());
          } else {
            neighbors64 = carray<int64_t>::ensure(neighbor_array);
            if (!neighbors64) throw Error(ErrorKind::Structure, "neighbour list entries must be integers");
            d.neighbors = neighbors64.data(), entries = size_t(neighbors64.size());
          }
          int64_t total = 0;
          for (size_t i = 0; i < nlocal; i++) total += d.numneigh[i];
          if (total != int64_t(entries))
            throw Error(ErrorKind::Structure, "neighbour counts sum to " + std::to_string(total) +
                                                  ", the list holds " + std::to_string(entries) + " entries");
          if (ids && size_t(ids->size()) != d.nall) throw Error(ErrorKind::Structure, "one id per atom expected");
          d.ids = ids ? ids->data() : nullptr;
          const Options o = options_from(chunk_atoms, strict, allow_below_rmin, atomic_virial, timeout, progress);
          return evaluate(model, device, o, d.nall, [&](Core &core, Result &r) { core.compute_neighbors(d, r); });
        },
        py::arg("model"), py::arg("device"), py::arg("x"), py::arg("types"), py::arg("nlocal"), py::arg("numneigh"),
        py::arg("neighbors"), py::arg("ids") = py::none(), py::arg("chunk_atoms") = 4096, py::arg("strict") = true,
        py::arg("allow_below_rmin") = false, py::arg("atomic_virial") = false, py::arg("timeout") = 600.0,
        py::arg("progress") = py::none());

  m.def("evaluate_periodic",
        [](const HostModel &model, py::object device, carray<double> positions, carray<int32_t> types,
           carray<double> cell, carray<double> basis, carray<int64_t> op, carray<double> origin,
           std::vector<bool> pbc, size_t chunk_atoms, bool strict, bool allow_below_rmin, bool atomic_virial,
           double timeout, py::object progress, double skin, size_t pair_list_bytes) {
          Structure s;
          s.natoms = size_t(types.size());
          if (size_t(positions.size()) != 3 * s.natoms || cell.size() != 9 || basis.size() != 9 || op.size() != 9 ||
              origin.size() != 3 || pbc.size() != 3)
            throw Error(ErrorKind::Structure, "positions, types, cell, basis, op, origin or pbc have the wrong shape");
          s.positions = positions.data();
          s.types = types.data();
          std::memcpy(s.cell, cell.data(), sizeof s.cell);
          std::memcpy(s.basis, basis.data(), sizeof s.basis);
          std::memcpy(s.op, op.data(), sizeof s.op);
          std::memcpy(s.origin, origin.data(), sizeof s.origin);
          for (int a = 0; a < 3; a++) s.pbc[a] = pbc[size_t(a)];
          Options o = options_from(chunk_atoms, strict, allow_below_rmin, atomic_virial, timeout, progress);
          o.skin = skin;
          o.pair_list_bytes = pair_list_bytes;
          return evaluate(model, device, o, s.natoms, [&](Core &core, Result &r) { core.compute_periodic(s, r); });
        },
        py::arg("model"), py::arg("device"), py::arg("positions"), py::arg("types"), py::arg("cell"), py::arg("basis"),
        py::arg("op"), py::arg("origin"), py::arg("pbc"), py::arg("chunk_atoms") = 4096, py::arg("strict") = true,
        py::arg("allow_below_rmin") = false, py::arg("atomic_virial") = false, py::arg("timeout") = 600.0,
        py::arg("progress") = py::none(), py::arg("skin") = Options{}.skin,
        py::arg("pair_list_bytes") = Options{}.pair_list_bytes);
}
