// Python bindings of the GPU engine, for any Backend: the CUDA device in the module _cuda, the
// host model in _core.cuda_model (the CPU tests). Arrays live on the backend's device as
// DeviceArray objects, which wrap a caller's device memory (torch, CuPy: through
// __cuda_array_interface__, on the Python side) or own memory copied from numpy once; results
// come back as DeviceArrays where the caller wants device arrays (kNN), as numpy where the
// result is small or numbered on the host (k-means' sums and limbs, DBSCAN's labels).
#include "gpu_bindings.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>

#include "../core/common.hpp"
#include "gpu_backend.hpp"

namespace ec {
namespace kmeans_impl {
double pow2_scale(idx_t n, double m, int bits);  // csrc/core/kmeans/chunk.cpp
}
}  // namespace ec

namespace ecgpu {
namespace {

namespace py = pybind11;
using ec::gpu::Backend;
using ec::gpu::idx_t;

/// A 1-D or 2-D array in a backend's memory.
struct DeviceArray {
  Backend* be = nullptr;
  void* ptr = nullptr;
  idx_t rows = 0, cols = 1;
  int ndim = 2;
  std::string typestr;  // numpy's: "<f4", "<i8", "|u1"
  bool owned = false;
  py::object keep;      // the owner of wrapped memory
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (owned && ptr) be->release(ptr);
  }
  std::size_t itemsize() const { return typestr == "<f4" ? 4 : typestr == "|u1" ? 1 : 8; }
  std::size_t bytes() const { return static_cast<std::size_t>(rows * cols) * itemsize(); }
  py::tuple shape() const {
    if (ndim == 1) return py::make_tuple(rows);
    return py::make_tuple(rows, cols);
  }
};

using ArrayPtr = std::shared_ptr<DeviceArray>;

ArrayPtr make_owned(Backend& be, idx_t rows, idx_t cols, int ndim, const char* typestr) {
  auto a = std::make_shared<DeviceArray>();
  a->be = &be;
  a->rows = rows;
  a->cols = cols;
  a->ndim = ndim;
  a->typestr = typestr;
  a->ptr = a->bytes() ? be.alloc(a->bytes()) : nullptr;
  a->owned = true;
  return a;
}

const char* typestr_of(const py::array& a) {
  const py::dtype dt = a.dtype();
  if (dt.is(py::dtype::of<float>())) return "<f4";
  if (dt.is(py::dtype::of<std::int64_t>())) return "<i8";
  if (dt.is(py::dtype::of<std::uint8_t>())) return "|u1";
  throw py::type_error("device arrays hold float32, int64 or uint8 values");
}

ArrayPtr from_numpy(Backend& be, const py::array& arr) {
  if (arr.ndim() != 1 && arr.ndim() != 2) throw py::value_error("device arrays are 1-D or 2-D");
  const py::array a = py::array::ensure(arr, py::array::c_style);
  const idx_t rows = a.shape(0), cols = a.ndim() == 2 ? a.shape(1) : 1;
  ArrayPtr out = make_owned(be, rows, cols, static_cast<int>(a.ndim()), typestr_of(a));
  if (out->bytes()) be.upload(out->ptr, a.data(), out->bytes());
  return out;
}

py::array to_numpy(const DeviceArray& a) {
  const py::dtype dt(a.typestr);
  std::vector<py::ssize_t> shape = {static_cast<py::ssize_t>(a.rows)};
  if (a.ndim == 2) shape.push_back(static_cast<py::ssize_t>(a.cols));
  py::array out(dt, shape);
  if (a.bytes()) {
    py::gil_scoped_release nogil;
    a.be->download(out.mutable_data(), a.ptr, a.bytes());
  }
  return out;
}

/// A float32 matrix argument: rows, cols and pointer, checked.
const float* floats(const DeviceArray& a, const char* name, idx_t cols = -1) {
  if (a.typestr != "<f4" || a.ndim != 2) throw py::type_error(std::string(name) + " must be a 2-D float32 device array");
  if (cols >= 0 && a.cols != cols)
    throw py::value_error(std::string(name) + " has " + std::to_string(a.cols) + " features, expected " + std::to_string(cols));
  return static_cast<const float*>(a.ptr);
}

const float* weights_of(const py::object& w, idx_t n) {
  if (w.is_none()) return nullptr;
  const auto& a = w.cast<const DeviceArray&>();
  if (a.typestr != "<f4" || a.rows * a.cols != n)
    throw py::value_error("sample weights must be a float32 device array of one value per row");
  return static_cast<const float*>(a.ptr);
}

std::vector<float> host_floats(const py::array& a, idx_t count, const char* name) {
  const py::array_t<float, py::array::c_style | py::array::forcecast> c(a);
  if (static_cast<idx_t>(c.size()) != count) throw py::value_error(std::string(name) + " has the wrong size");
  return std::vector<float>(c.data(), c.data() + c.size());
}

std::vector<double> host_doubles(const py::array& a, idx_t count, const char* name) {
  const py::array_t<double, py::array::c_style | py::array::forcecast> c(a);
  if (static_cast<idx_t>(c.size()) != count) throw py::value_error(std::string(name) + " has the wrong size");
  return std::vector<double>(c.data(), c.data() + c.size());
}

template <class T>
py::array_t<T> numpy_of(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

/// A chunk's device state: norms and labels (ec::gpu::ChunkState) in memory it owns.
struct GpuChunkState {
  ec::gpu::ChunkState st;
  ArrayPtr xsq, xnorm, labels;
  GpuChunkState(Backend& be, idx_t n, idx_t d) {
    xsq = make_owned(be, n, 1, 1, "<f8");
    xnorm = make_owned(be, n, 1, 1, "<f8");
    labels = make_owned(be, n, 1, 1, "<i8");
    st.n = n;
    st.d = d;
    st.xsq = static_cast<double*>(xsq->ptr);
    st.xnorm = static_cast<double*>(xnorm->ptr);
    st.labels = static_cast<std::int64_t*>(labels->ptr);
  }
  const float* rows_of(const DeviceArray& X) const {
    const float* p = floats(X, "X", st.d);
    if (X.rows != st.n) throw py::value_error("X has " + std::to_string(X.rows) + " rows; this state has " + std::to_string(st.n));
    return p;
  }
  void need_pass() const {
    if (!st.valid) throw py::value_error("this chunk state has no labels yet: run kmeans_chunk_pass first");
  }
};

}  // namespace

void bind_gpu_backend(py::module_& m, Backend& be, bool cuda) {
  Backend* B = &be;
  py::class_<DeviceArray, ArrayPtr> arr(m, "DeviceArray", py::module_local(),
                                         "A 1-D or 2-D array (float32, int64 or uint8) in the engine's device memory.");
  arr.def_property_readonly("shape", &DeviceArray::shape)
      .def_property_readonly("typestr", [](const DeviceArray& a) { return a.typestr; })
      .def_property_readonly("ptr", [](const DeviceArray& a) { return reinterpret_cast<std::uintptr_t>(a.ptr); })
      .def("numpy", &to_numpy, "A host copy as a numpy array.")
      .def_static("from_numpy", [B](const py::array& a) { return from_numpy(*B, a); }, py::arg("array"),
                  "Copies a numpy array (float32, int64 or uint8; 1-D or 2-D) to the device.")
      .def_static(
          "wrap",
          [B](std::uintptr_t ptr, const py::tuple& shape, const std::string& typestr, py::object owner) {
            auto a = std::make_shared<DeviceArray>();
            a->be = B;
            a->ptr = reinterpret_cast<void*>(ptr);
            a->ndim = static_cast<int>(shape.size());
            if (a->ndim != 1 && a->ndim != 2) throw py::value_error("device arrays are 1-D or 2-D");
            a->rows = shape[0].cast<idx_t>();
            a->cols = a->ndim == 2 ? shape[1].cast<idx_t>() : 1;
            if (typestr != "<f4" && typestr != "<i8" && typestr != "|u1")
              throw py::type_error("device arrays hold float32, int64 or uint8 values (got " + typestr + ")");
            a->typestr = typestr;
            a->keep = std::move(owner);
            return a;
          },
          py::arg("ptr"), py::arg("shape"), py::arg("typestr"), py::arg("owner"),
          "Wraps C-contiguous device memory that `owner` keeps alive (no copy).");
  arr.def_property_readonly(cuda ? "__cuda_array_interface__" : "__array_interface__", [cuda](const DeviceArray& a) {
    py::dict d;
    d["shape"] = a.shape();
    d["typestr"] = a.typestr;
    d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(a.ptr), false);
    d["version"] = 3;
    if (cuda) d["stream"] = py::none();  // the engine synchronised its work on the stream it was given
    return d;
  });

  py::class_<GpuChunkState, std::shared_ptr<GpuChunkState>>(m, "ChunkState", py::module_local(),
                                                           "A chunk's norms and labels on the device.")
      .def(py::init([B](idx_t n, idx_t d) { return std::make_shared<GpuChunkState>(*B, n, d); }), py::arg("n"),
           py::arg("d"))
      .def_property_readonly("labels", [](const GpuChunkState& s) { return s.labels; })
      .def_property_readonly("valid", [](const GpuChunkState& s) { return s.st.valid; })
      .def("reset", [](GpuChunkState& s) { s.st.valid = false; }, "Forgets the labels (a new run); keeps the norms.");

  m.def("name", [B] { return B->name(); });
  m.def("available", [B] {
    std::string why;
    const bool ok = B->available(why);
    return py::make_tuple(ok, why);
  });
  m.def("set_stream", [B](std::uintptr_t s) { B->set_stream(s); }, py::arg("stream"));
  m.def("sync", [B] {
    py::gil_scoped_release nogil;
    B->sync();
  });

  m.def(
      "kmeans_chunk_stats",
      [B](GpuChunkState& s, const DeviceArray& X, const py::object& w, int metric, idx_t row_offset) {
        const float* x = s.rows_of(X);
        const float* wp = weights_of(w, s.st.n);
        ec::gpu::ChunkStatsOut o;
        {
          py::gil_scoped_release nogil;
          o = B->kmeans_stats(x, s.st.n, s.st.d, wp, metric, row_offset, s.st.xsq, s.st.xnorm);
        }
        s.st.normed = true;
        return py::make_tuple(s.st.n, numpy_of(o.colmax), numpy_of(o.absmax), o.wmax);
      },
      py::arg("state"), py::arg("X"), py::arg("weight"), py::arg("metric"), py::arg("row_offset") = 0);
  m.def(
      "kmeans_chunk_moments",
      [B](const GpuChunkState& s, const DeviceArray& X, const py::array& absmax, idx_t n_total, int metric) {
        const float* x = s.rows_of(X);
        if (!s.st.normed) throw py::value_error("run kmeans_chunk_stats on this state first");
        const std::vector<double> am = host_doubles(absmax, s.st.d, "absmax");
        std::vector<double> s1(am.size()), s2(am.size());
        for (std::size_t f = 0; f < am.size(); ++f) {
          s1[f] = ec::kmeans_impl::pow2_scale(n_total, am[f], 120);
          s2[f] = ec::kmeans_impl::pow2_scale(n_total, am[f] * am[f], 120);
        }
        std::vector<std::uint64_t> limbs;
        {
          py::gil_scoped_release nogil;
          limbs = B->kmeans_moments(x, s.st.n, s.st.d, metric, s.st.xnorm, s1, s2);
        }
        return numpy_of(limbs);
      },
      py::arg("state"), py::arg("X"), py::arg("absmax"), py::arg("n_total"), py::arg("metric"));
  m.def(
      "kmeans_chunk_pass",
      [B](GpuChunkState& s, const DeviceArray& X, const py::object& w, const py::array& centers, const py::array& qscale,
          double wscale, int metric) {
        const float* x = s.rows_of(X);
        const float* wp = weights_of(w, s.st.n);
        const idx_t k = static_cast<idx_t>(centers.size()) / std::max<idx_t>(1, s.st.d);
        const std::vector<float> c = host_floats(centers, k * s.st.d, "centers");
        const std::vector<double> q = host_doubles(qscale, s.st.d, "qscale");
        std::vector<std::uint64_t> sums;
        idx_t changed;
        {
          py::gil_scoped_release nogil;
          changed = B->kmeans_pass(s.st, x, wp, c.data(), k, q.data(), wscale, metric, sums);
        }
        return py::make_tuple(changed, numpy_of(sums));
      },
      py::arg("state"), py::arg("X"), py::arg("weight"), py::arg("centers"), py::arg("qscale"), py::arg("wscale"),
      py::arg("metric"));
  m.def(
      "kmeans_chunk_farthest",
      [B](const GpuChunkState& s, const DeviceArray& X, const py::array& centers, idx_t count, int metric) {
        const float* x = s.rows_of(X);
        s.need_pass();
        const idx_t k = static_cast<idx_t>(centers.size()) / std::max<idx_t>(1, s.st.d);
        const std::vector<float> c = host_floats(centers, k * s.st.d, "centers");
        std::vector<float> dist;
        {
          py::gil_scoped_release nogil;
          dist = B->kmeans_label_distances(s.st, x, c.data(), k, metric);
        }
        std::vector<idx_t> order(dist.size());
        std::iota(order.begin(), order.end(), idx_t{0});
        const auto ne = static_cast<std::size_t>(std::min<idx_t>(std::max<idx_t>(count, 0), s.st.n));
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(ne), order.end(), [&](idx_t a, idx_t b) {
          return dist[static_cast<std::size_t>(a)] != dist[static_cast<std::size_t>(b)]
                     ? dist[static_cast<std::size_t>(a)] > dist[static_cast<std::size_t>(b)]
                     : a < b;
        });
        order.resize(ne);
        std::vector<float> top(ne);
        for (std::size_t e = 0; e < ne; ++e) top[e] = dist[static_cast<std::size_t>(order[e])];
        return py::make_tuple(numpy_of(top), numpy_of(order));
      },
      py::arg("state"), py::arg("X"), py::arg("centers"), py::arg("count"), py::arg("metric"));
  m.def(
      "kmeans_chunk_objective",
      [B](const GpuChunkState& s, const DeviceArray& X, const py::object& w, const py::array& centers, double scale,
          int metric) {
        const float* x = s.rows_of(X);
        s.need_pass();
        const float* wp = weights_of(w, s.st.n);
        const idx_t k = static_cast<idx_t>(centers.size()) / std::max<idx_t>(1, s.st.d);
        const std::vector<float> c = host_floats(centers, k * s.st.d, "centers");
        std::vector<std::uint64_t> limbs;
        {
          py::gil_scoped_release nogil;
          limbs = B->kmeans_objective(s.st, x, wp, c.data(), k, scale, metric);
        }
        return numpy_of(limbs);
      },
      py::arg("state"), py::arg("X"), py::arg("weight"), py::arg("centers"), py::arg("scale"), py::arg("metric"));
  m.def(
      "knn_search",
      [B](const DeviceArray& db, const DeviceArray& q, int k, int metric, bool self) {
        const float* y = floats(db, "database");
        const float* x = floats(q, "queries", db.cols);
        if (self && (x != y || q.rows != db.rows)) throw py::value_error("self=True needs the queries to be the database");
        ArrayPtr dist = make_owned(*B, q.rows, k, 2, "<f4");
        ArrayPtr idx = make_owned(*B, q.rows, k, 2, "<i8");
        {
          py::gil_scoped_release nogil;
          B->knn_search(y, db.rows, x, q.rows, db.cols, k, metric, self, static_cast<float*>(dist->ptr),
                        static_cast<std::int64_t*>(idx->ptr));
          B->sync();
        }
        return py::make_tuple(dist, idx);
      },
      py::arg("database"), py::arg("queries"), py::arg("k"), py::arg("metric"), py::arg("self") = false,
      "Exact k nearest database rows of every query (distances as the CPU engine reports them; ties: lower index).");
  m.def(
      "dbscan",
      [B](const DeviceArray& X, double eps, int min_samples, int metric) {
        const float* x = floats(X, "X");
        ec::gpu::DbscanOut o;
        {
          py::gil_scoped_release nogil;
          o = B->dbscan(x, X.rows, X.cols, eps, min_samples, metric, [] {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          });
        }
        return py::make_tuple(numpy_of(o.labels), numpy_of(o.is_core), numpy_of(o.counts), o.n_clusters);
      },
      py::arg("X"), py::arg("eps"), py::arg("min_samples"), py::arg("metric"),
      "DBSCAN labels (clusters numbered by their lowest core row; noise -1), core flags and neighbour counts.");
}

}  // namespace ecgpu
