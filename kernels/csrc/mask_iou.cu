// IoU / coverage of every proposal mask against every cluster mask of its frame
// (definitions: moca_rt/kernels/mask_iou.py). One block per (proposal, frame); threads stride
// over the pixels counting |P|, |M_k| and |P ∩ M_k| in registers, then a block reduction.
// Masks are uint8, nonzero = inside; counts are exact integers.
#include "moca_kernels.cuh"

extern "C" __global__ void __launch_bounds__(MOCA_MASK_THREADS)
    moca_mask_match_u8_kernel(const unsigned char* proposals, const unsigned char* clusters,
                              float* out, int P, int K, int HW, int coverage) {
  __shared__ unsigned int red[(2 * MOCA_MASK_MAX_K + 1) * 32];
  const int p = blockIdx.x;
  const int b = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = blockDim.x >> 5;
  const unsigned char* pp = proposals + (static_cast<long long>(b) * P + p) * HW;
  const unsigned char* cc = clusters + static_cast<long long>(b) * K * HW;

  unsigned int area_p = 0;
  unsigned int area_c[MOCA_MASK_MAX_K];
  unsigned int inter[MOCA_MASK_MAX_K];
#pragma unroll
  for (int k = 0; k < MOCA_MASK_MAX_K; ++k) {
    area_c[k] = 0;
    inter[k] = 0;
  }
  for (int s = tid; s < HW; s += blockDim.x) {
    const unsigned int pin = pp[s] != 0;
    area_p += pin;
#pragma unroll
    for (int k = 0; k < MOCA_MASK_MAX_K; ++k) {
      if (k < K) {
        const unsigned int cin = cc[static_cast<long long>(k) * HW + s] != 0;
        area_c[k] += cin;
        inter[k] += pin & cin;
      }
    }
  }
  for (int off = 16; off > 0; off >>= 1) area_p += __shfl_xor_sync(0xffffffffu, area_p, off);
#pragma unroll
  for (int k = 0; k < MOCA_MASK_MAX_K; ++k) {
    for (int off = 16; off > 0; off >>= 1) {
      area_c[k] += __shfl_xor_sync(0xffffffffu, area_c[k], off);
      inter[k] += __shfl_xor_sync(0xffffffffu, inter[k], off);
    }
  }
  if (lane == 0) {
    red[warp] = area_p;
#pragma unroll
    for (int k = 0; k < MOCA_MASK_MAX_K; ++k) {
      red[(1 + k) * 32 + warp] = area_c[k];
      red[(1 + MOCA_MASK_MAX_K + k) * 32 + warp] = inter[k];
    }
  }
  __syncthreads();
  if (tid < K) {
    unsigned int ap = 0, ac = 0, in = 0;
    for (int w = 0; w < nwarps; ++w) {
      ap += red[w];
      ac += red[(1 + tid) * 32 + w];
      in += red[(1 + MOCA_MASK_MAX_K + tid) * 32 + w];
    }
    const unsigned int denom = coverage ? ap : ap + ac - in;
    out[(static_cast<long long>(b) * P + p) * K + tid] =
        denom > 0 ? static_cast<float>(in) / static_cast<float>(denom) : 0.f;
  }
}

#ifndef MOCA_RT_NVRTC
extern "C" int moca_mask_match_u8(const uint8_t* proposals, const uint8_t* clusters, float* out, int B,
                                  int P, int K, int HW, int coverage, cudaStream_t stream) {
  if (B < 0 || P < 0 || K < 1 || K > MOCA_MASK_MAX_K || HW < 1) return static_cast<int>(cudaErrorInvalidValue);
  if (B == 0 || P == 0) return 0;
  const dim3 grid(static_cast<unsigned int>(P), static_cast<unsigned int>(B));
  moca_mask_match_u8_kernel<<<grid, MOCA_MASK_THREADS, 0, stream>>>(proposals, clusters, out, P, K, HW, coverage);
  return static_cast<int>(cudaGetLastError());
}
#endif  // MOCA_RT_NVRTC
