// Batched cosine k-means, one thread block per frame (algorithm: moca_rt/kernels/kmeans.py).
//
// Per frame: k-means++ seeding from the counter-based draws `rand` (K passes over the frame,
// one thread makes each integer-weighted choice), then at most max_iters rounds of
// update (members listed by a stable counting sort; threads over D sum their members' unit
// rows, an empty cluster keeps its centroid) and assignment (a warp per row, K dot products
// against the unnormalised centroid rows scaled by their inverse norms, ties to the lowest k).
// Features are read twice per round (update + assignment). Shared memory: 16 N + 2260 bytes.
#include "moca_kernels.cuh"

#define MOCA_SMEM_FIXED_WORDS (MOCA_KMEANS_MAX_K * 2 + MOCA_KMEANS_MAX_K * 32 + MOCA_KMEANS_MAX_K + 1 + 4)

template <int DT>
__device__ void moca_kmeans_frame(const void* xv, const int* rand, float* cent, long long* labels_out,
                                  int* iters_out, int N, int D, int K, int max_iters, int early_stop) {
  extern __shared__ float smem[];
  float* inv_rn = smem;                                   // N: 1 / |x_n|
  float* best = inv_rn + N;                               // N: seeding, max cos to the centres
  int* lab = reinterpret_cast<int*>(best + N);            // N: current labels
  int* order = lab + N;                                   // N: rows sorted by label / weights
  float* inv_norm = reinterpret_cast<float*>(order + N);  // MAX_K: 1 / |centroid row|
  float* red = inv_norm + MOCA_KMEANS_MAX_K;              // MAX_K * 32: per-warp partial sums
  int* counts = reinterpret_cast<int*>(red + MOCA_KMEANS_MAX_K * 32);  // MAX_K
  int* offs = counts + MOCA_KMEANS_MAX_K;                 // MAX_K + 1
  int* misc = offs + MOCA_KMEANS_MAX_K + 1;               // [0] chosen row, [1] changed flag

  const int b = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = blockDim.x >> 5;
  const long long xoff = static_cast<long long>(b) * N * D;
  float* cb = cent + static_cast<long long>(b) * K * D;
  const int* rb = rand + b * K;

  // Seeding step 0 with the row norms.
  int c = rb[0] % N;
  for (int n = warp; n < N; n += nwarps) {
    float ss = 0.f, dt = 0.f;
    for (int d = lane; d < D; d += 32) {
      float v = moca_load<DT>(xv, xoff + static_cast<long long>(n) * D + d);
      float w = moca_load<DT>(xv, xoff + static_cast<long long>(c) * D + d);
      ss += v * v;
      dt += v * w;
    }
    ss = moca_warp_sum(ss);
    dt = moca_warp_sum(dt);
    if (lane == 0) {
      inv_rn[n] = 1.f / fmaxf(sqrtf(ss), 1e-12f);
      best[n] = dt;
    }
  }
  for (int d = tid; d < D; d += blockDim.x) cb[d] = moca_load<DT>(xv, xoff + static_cast<long long>(c) * D + d);
  __syncthreads();
  {
    const float ic = inv_rn[c];
    for (int n = tid; n < N; n += blockDim.x) {
      best[n] = best[n] * inv_rn[n] * ic;
      lab[n] = 0;
    }
    if (tid == 0) inv_norm[0] = ic;
  }
  __syncthreads();

  for (int s = 1; s < K; ++s) {
    if (tid == 0) {
      long long total = 0;
      for (int n = 0; n < N; ++n) {
        const int q = static_cast<int>(fminf(fmaxf(1.f - best[n], 0.f), 2.f) * 65536.f);
        order[n] = q;
        total += q;
      }
      const int rs = rb[s];
      int idx;
      if (total > 0) {
        const long long r = (static_cast<long long>(rs) * total) >> 31;
        long long cum = 0;
        idx = 0;
        while (idx < N) {
          cum += order[idx];
          if (cum > r) break;
          ++idx;
        }
      } else {
        idx = rs % N;
      }
      misc[0] = idx;
    }
    __syncthreads();
    c = misc[0];
    const float ic = inv_rn[c];
    for (int n = warp; n < N; n += nwarps) {
      float dt = 0.f;
      for (int d = lane; d < D; d += 32) {
        dt += moca_load<DT>(xv, xoff + static_cast<long long>(n) * D + d) *
              moca_load<DT>(xv, xoff + static_cast<long long>(c) * D + d);
      }
      dt = moca_warp_sum(dt);
      if (lane == 0) {
        const float col = dt * inv_rn[n] * ic;
        if (col > best[n]) {
          best[n] = col;
          lab[n] = s;
        }
      }
    }
    for (int d = tid; d < D; d += blockDim.x) {
      cb[static_cast<long long>(s) * D + d] = moca_load<DT>(xv, xoff + static_cast<long long>(c) * D + d);
    }
    if (tid == 0) inv_norm[s] = ic;
    __syncthreads();
  }

  int it = 0;
  int changed = 1;
  while (it < max_iters && changed) {
    if (tid == 0) {
      int cur[MOCA_KMEANS_MAX_K];
      for (int k = 0; k < K; ++k) counts[k] = 0;
      for (int n = 0; n < N; ++n) counts[lab[n]] += 1;
      offs[0] = 0;
      for (int k = 0; k < K; ++k) {
        offs[k + 1] = offs[k] + counts[k];
        cur[k] = offs[k];
      }
      for (int n = 0; n < N; ++n) order[cur[lab[n]]++] = n;
      misc[1] = 0;
    }
    __syncthreads();

    float sq[MOCA_KMEANS_MAX_K];
#pragma unroll
    for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) sq[k] = 0.f;
    for (int d = tid; d < D; d += blockDim.x) {
#pragma unroll
      for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) {
        if (k < K && counts[k] > 0) {
          float acc = 0.f;
          for (int m = offs[k]; m < offs[k + 1]; ++m) {
            const int n = order[m];
            acc += moca_load<DT>(xv, xoff + static_cast<long long>(n) * D + d) * inv_rn[n];
          }
          cb[static_cast<long long>(k) * D + d] = acc;
          sq[k] += acc * acc;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) {
      if (k < K) {
        const float v = moca_warp_sum(sq[k]);
        if (lane == 0) red[k * 32 + warp] = v;
      }
    }
    __syncthreads();
    if (tid < K && counts[tid] > 0) {
      float t = 0.f;
      for (int w = 0; w < nwarps; ++w) t += red[tid * 32 + w];
      inv_norm[tid] = 1.f / fmaxf(sqrtf(t), 1e-12f);
    }
    __syncthreads();

    for (int n = warp; n < N; n += nwarps) {
      float acc[MOCA_KMEANS_MAX_K];
#pragma unroll
      for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) acc[k] = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float v = moca_load<DT>(xv, xoff + static_cast<long long>(n) * D + d);
#pragma unroll
        for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) {
          if (k < K) acc[k] += v * cb[static_cast<long long>(k) * D + d];
        }
      }
#pragma unroll
      for (int k = 0; k < MOCA_KMEANS_MAX_K; ++k) {
        if (k < K) acc[k] = moca_warp_sum(acc[k]);
      }
      if (lane == 0) {
        int bk = 0;
        float bs = acc[0] * inv_norm[0];
#pragma unroll
        for (int k = 1; k < MOCA_KMEANS_MAX_K; ++k) {
          if (k < K) {
            const float sc = acc[k] * inv_norm[k];
            if (sc > bs) {
              bs = sc;
              bk = k;
            }
          }
        }
        if (bk != lab[n]) {
          lab[n] = bk;
          misc[1] = 1;
        }
      }
    }
    __syncthreads();
    changed = early_stop ? misc[1] : 1;
    ++it;
    __syncthreads();
  }

  for (int n = tid; n < N; n += blockDim.x) labels_out[static_cast<long long>(b) * N + n] = lab[n];
  if (tid == 0) iters_out[b] = it;
  for (int i = tid; i < K * D; i += blockDim.x) cb[i] *= inv_norm[i / D];
}

#define MOCA_KMEANS_ENTRY(NAME, DT)                                                               \
  extern "C" __global__ void __launch_bounds__(MOCA_KMEANS_THREADS)                               \
      NAME(const void* x, const int* rand, float* cent, long long* labels, int* iters, int N,     \
           int D, int K, int max_iters, int early_stop) {                                         \
    moca_kmeans_frame<DT>(x, rand, cent, labels, iters, N, D, K, max_iters, early_stop);          \
  }

MOCA_KMEANS_ENTRY(moca_kmeans_f32, MOCA_DTYPE_F32)
MOCA_KMEANS_ENTRY(moca_kmeans_f16, MOCA_DTYPE_F16)
MOCA_KMEANS_ENTRY(moca_kmeans_bf16, MOCA_DTYPE_BF16)

#ifndef MOCA_RT_NVRTC
static uint32_t moca_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

extern "C" void moca_kmeanspp_random_table(uint64_t seed, int batch, int k, int32_t* out) {
  const uint32_t base = static_cast<uint32_t>(seed) * 0x9E3779B1u + 0x27D4EB2Fu;
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < k; ++s) {
      const uint32_t h = static_cast<uint32_t>(s) * 0xC2B2AE3Du + base;  // same draws for every frame
      out[b * k + s] = static_cast<int32_t>(moca_mix32(h) >> 1);
    }
  }
}

extern "C" int moca_cosine_kmeans(int dtype, const void* x, const int32_t* rand, float* centroids,
                                  int64_t* labels, int32_t* iterations, int B, int N, int D, int K,
                                  int max_iters, int early_stop, cudaStream_t stream) {
  if (K < 1 || K > MOCA_KMEANS_MAX_K || N < K || N > MOCA_KMEANS_MAX_N || D < 1 || B < 1 || max_iters < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const size_t smem = sizeof(float) * (4 * static_cast<size_t>(N) + MOCA_SMEM_FIXED_WORDS);
  long long* lab = reinterpret_cast<long long*>(labels);
  switch (dtype) {
    case MOCA_DTYPE_F32:
      moca_kmeans_f32<<<B, MOCA_KMEANS_THREADS, smem, stream>>>(x, rand, centroids, lab, iterations, N, D, K, max_iters, early_stop);
      break;
    case MOCA_DTYPE_F16:
      moca_kmeans_f16<<<B, MOCA_KMEANS_THREADS, smem, stream>>>(x, rand, centroids, lab, iterations, N, D, K, max_iters, early_stop);
      break;
    case MOCA_DTYPE_BF16:
      moca_kmeans_bf16<<<B, MOCA_KMEANS_THREADS, smem, stream>>>(x, rand, centroids, lab, iterations, N, D, K, max_iters, early_stop);
      break;
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}
#endif  // MOCA_RT_NVRTC
