// moca_rt CUDA kernels: shared device helpers and the host API of the shared library.
//
// The .cu files are compiled twice: by NVRTC at run time through CuPy (with -DMOCA_RT_NVRTC:
// device code only, no CUDA runtime headers) and by nvcc through CMakeLists.txt (kernels plus
// the extern "C" host launchers declared below). Element types are passed as raw bits so that
// no cuda_fp16.h / cuda_bf16.h is needed under NVRTC.
#pragma once

#define MOCA_DTYPE_F32 0
#define MOCA_DTYPE_F16 1
#define MOCA_DTYPE_BF16 2

#define MOCA_KMEANS_THREADS 256
#define MOCA_KMEANS_MAX_K 16
#define MOCA_KMEANS_MAX_N 2048
#define MOCA_MASK_THREADS 256
#define MOCA_MASK_MAX_K 16

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// Element i of an fp32 / fp16 / bf16 array as fp32.
template <int DT>
__device__ __forceinline__ float moca_load(const void* base, long long i) {
  if (DT == MOCA_DTYPE_F32) {
    return static_cast<const float*>(base)[i];
  } else if (DT == MOCA_DTYPE_BF16) {
    unsigned int bits = static_cast<const unsigned short*>(base)[i];
    return __uint_as_float(bits << 16);
  } else {
    unsigned short bits = static_cast<const unsigned short*>(base)[i];
    float out;
    asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(bits));
    return out;
  }
}

__device__ __forceinline__ float moca_warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
#endif  // device helpers

#ifndef MOCA_RT_NVRTC
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Counter-based k-means++ draws, identical to moca_rt.kernels.kmeans.kmeanspp_random_table:
// out[b * k + s] in [0, 2^31), the same for every frame b. Host function (no GPU needed).
void moca_kmeanspp_random_table(uint64_t seed, int batch, int k, int32_t* out);

// Cosine k-means of B frames of x [B, N, D] (dtype MOCA_DTYPE_*), row-major contiguous.
// rand: device [B, K] int32 from moca_kmeanspp_random_table. Outputs (device): centroids
// [B, K, D] fp32 unit norm, labels [B, N] int64, iterations [B] int32.
// Limits: 1 <= K <= 16, K <= N <= 2048. Returns a cudaError_t value (0 = success).
int moca_cosine_kmeans(int dtype, const void* x, const int32_t* rand, float* centroids,
                       int64_t* labels, int32_t* iterations, int B, int N, int D, int K,
                       int max_iters, int early_stop, cudaStream_t stream);

// IoU (coverage = 0) or coverage (coverage = 1) of proposals [B, P, HW] against cluster masks
// [B, K, HW], both uint8 (nonzero = inside); out [B, P, K] fp32. Limit: K <= 16.
int moca_mask_match_u8(const uint8_t* proposals, const uint8_t* clusters, float* out, int B,
                       int P, int K, int HW, int coverage, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif  // MOCA_RT_NVRTC
