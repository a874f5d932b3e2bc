// Raw copies across geometries, dtypes and devices. Host <-> device transfers move contiguous
// bytes of one dtype; any reshuffling or conversion happens on the side that holds the data.
#include "tensor/copy.h"

#include "tensor/cpu/kernels.h"
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos {

Tensor raw_expand(const Tensor& t, const Shape& shape, const char* op) {
  BCOS_CHECK(shape.size() >= t.dim(), op, ": cannot broadcast shape ", t.shape(), " to ",
             shape);
  Strides st;
  st.resize(shape.size());
  int lead = shape.size() - t.dim();
  for (int i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      st[i] = 0;
      continue;
    }
    int64_t s = t.shape()[i - lead];
    BCOS_CHECK(s == shape[i] || s == 1, op, ": cannot broadcast shape ", t.shape(), " to ",
               shape);
    st[i] = (s == shape[i]) ? t.strides()[i - lead] : 0;
  }
  return t.alias(shape, st, t.offset());
}

void copy_into(const Tensor& dst, const Tensor& src) {
  BCOS_CHECK(dst.defined() && src.defined(), "copy_: undefined tensor");
  Tensor s = src.shape() == dst.shape() ? src : raw_expand(src, dst.shape(), "copy_");
  if (dst.numel() == 0) return;
  Device dd = dst.device(), sd = s.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    cpu::copy(dst, s);
    return;
  }
#ifdef BCOS_WITH_CUDA
  if (dd.is_cuda() && sd.is_cuda()) {
    if (dd == sd) {
      cuda::copy(dst, s);
    } else {  // between GPUs: contiguous bytes, then reshuffle on the destination
      Tensor tmp = raw_contiguous(s);
      Tensor staged = empty(tmp.shape(), {tmp.dtype(), dd});
      cuda::copy_peer(staged.raw_data(), dd.index, tmp.raw_data(), sd.index,
                      size_t(tmp.numel()) * tmp.element_size());
      cuda::copy(dst, staged);
    }
    return;
  }
  if (dd.is_cuda()) {  // host -> device
    Tensor host = s.is_contiguous() && s.dtype() == dst.dtype() ? s : empty(s.shape(), dst.dtype());
    if (host.storage() != s.storage()) cpu::copy(host, s);
    if (dst.is_contiguous()) {
      cuda::copy_host_to_device(dst.raw_data(), host.raw_data(),
                                size_t(host.numel()) * host.element_size(), dd.index);
    } else {
      Tensor staged = empty(host.shape(), {host.dtype(), dd});
      cuda::copy_host_to_device(staged.raw_data(), host.raw_data(),
                                size_t(host.numel()) * host.element_size(), dd.index);
      cuda::copy(dst, staged);
    }
    return;
  }
  // device -> host
  Tensor dev = s.is_contiguous() ? s : raw_contiguous(s);
  if (dst.is_contiguous() && dst.dtype() == dev.dtype()) {
    cuda::copy_device_to_host(dst.raw_data(), dev.raw_data(),
                              size_t(dev.numel()) * dev.element_size(), sd.index);
  } else {
    Tensor host = empty(dev.shape(), dev.dtype());
    cuda::copy_device_to_host(host.raw_data(), dev.raw_data(),
                              size_t(dev.numel()) * dev.element_size(), sd.index);
    cpu::copy(dst, host);
  }
#else
  fail("copy_: cannot copy between ", sd, " and ", dd, ": bcos was built without CUDA");
#endif
}

void fill_into(const Tensor& dst, double value) {
  if (dst.numel() == 0) return;
  if (dst.is_cpu()) return cpu::fill(dst, value);
#ifdef BCOS_WITH_CUDA
  cuda::fill(dst, value);
#endif
}

Tensor raw_contiguous(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = empty(t.shape(), {t.dtype(), t.device()});
  copy_into(out, t);
  return out;
}

Tensor raw_to(const Tensor& t, DType dtype, Device device) {
  if (t.dtype() == dtype && t.device() == device) return t;
  Tensor out = empty(t.shape(), {dtype, device});
  copy_into(out, t);
  return out;
}

Tensor to_cpu_contiguous(const Tensor& t) {
  if (t.is_cpu()) return raw_contiguous(t);
  return raw_to(t, t.dtype(), Device::cpu());
}

}  // namespace bcos
