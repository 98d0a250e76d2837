// Smoke test of the moca_rt_kernels shared library (built by CMakeLists.txt, run by ctest).
// Exit codes: 0 pass, 1 fail, 77 "skipped: no GPU" (ctest SKIP_RETURN_CODE).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "moca_kernels.cuh"

namespace {

constexpr int kSkip = 77;

bool check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s failed: %s\n", what, cudaGetErrorString(err));
    return false;
  }
  return true;
}

// Three well-separated groups of rows; k-means must recover them exactly.
bool kmeans_case() {
  const int B = 2, N = 60, D = 48, K = 3;
  std::vector<float> x(static_cast<size_t>(B) * N * D);
  std::vector<int> truth(static_cast<size_t>(B) * N);
  uint32_t state = 12345u;
  auto next = [&state]() {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
  };
  for (int b = 0; b < B; ++b) {
    for (int n = 0; n < N; ++n) {
      const int g = (n * 7 + b) % K;
      truth[b * N + n] = g;
      for (int d = 0; d < D; ++d) {
        const float centre = (d % K == g) ? 1.0f : 0.0f;
        x[(static_cast<size_t>(b) * N + n) * D + d] = centre + 0.05f * next();
      }
    }
  }
  std::vector<int32_t> rand(B * K);
  moca_kmeanspp_random_table(0, B, K, rand.data());

  float *dx = nullptr, *dc = nullptr;
  int32_t *dr = nullptr, *di = nullptr;
  int64_t* dl = nullptr;
  bool ok = check(cudaMalloc(&dx, x.size() * sizeof(float)), "cudaMalloc") &&
            check(cudaMalloc(&dc, sizeof(float) * B * K * D), "cudaMalloc") &&
            check(cudaMalloc(&dr, sizeof(int32_t) * B * K), "cudaMalloc") &&
            check(cudaMalloc(&di, sizeof(int32_t) * B), "cudaMalloc") &&
            check(cudaMalloc(&dl, sizeof(int64_t) * B * N), "cudaMalloc") &&
            check(cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice), "copy") &&
            check(cudaMemcpy(dr, rand.data(), sizeof(int32_t) * B * K, cudaMemcpyHostToDevice), "copy");
  std::vector<int64_t> labels(static_cast<size_t>(B) * N);
  std::vector<float> cent(static_cast<size_t>(B) * K * D);
  std::vector<int32_t> iters(B);
  if (ok) {
    ok = check(static_cast<cudaError_t>(moca_cosine_kmeans(MOCA_DTYPE_F32, dx, dr, dc, dl, di, B, N, D, K, 20, 1, 0)),
               "moca_cosine_kmeans") &&
         check(cudaDeviceSynchronize(), "kmeans kernel") &&
         check(cudaMemcpy(labels.data(), dl, sizeof(int64_t) * B * N, cudaMemcpyDeviceToHost), "copy") &&
         check(cudaMemcpy(cent.data(), dc, sizeof(float) * B * K * D, cudaMemcpyDeviceToHost), "copy") &&
         check(cudaMemcpy(iters.data(), di, sizeof(int32_t) * B, cudaMemcpyDeviceToHost), "copy");
  }
  cudaFree(dx);
  cudaFree(dc);
  cudaFree(dr);
  cudaFree(di);
  cudaFree(dl);
  if (!ok) return false;
  for (int b = 0; b < B; ++b) {
    int map[K] = {-1, -1, -1};
    for (int n = 0; n < N; ++n) {
      const int g = truth[b * N + n];
      const int l = static_cast<int>(labels[b * N + n]);
      if (l < 0 || l >= K) return std::fprintf(stderr, "label %d out of range\n", l), false;
      if (map[g] < 0) map[g] = l;
      if (map[g] != l) return std::fprintf(stderr, "frame %d row %d: group %d split\n", b, n, g), false;
    }
    if (map[0] == map[1] || map[1] == map[2] || map[0] == map[2]) {
      return std::fprintf(stderr, "frame %d: groups merged\n", b), false;
    }
    for (int k = 0; k < K; ++k) {
      double nn = 0;
      for (int d = 0; d < D; ++d) nn += double(cent[(b * K + k) * D + d]) * cent[(b * K + k) * D + d];
      if (std::fabs(nn - 1.0) > 1e-4) return std::fprintf(stderr, "centroid norm^2 %f\n", nn), false;
    }
    if (iters[b] < 1 || iters[b] > 20) return std::fprintf(stderr, "iterations %d\n", iters[b]), false;
  }
  std::printf("kmeans: ok (iterations %d, %d)\n", iters[0], iters[1]);
  return true;
}

// 4x4 masks: proposal = left half (8 px), cluster 0 = top half (8 px, 4 shared), cluster 1 empty.
bool mask_case() {
  const int B = 1, P = 2, K = 2, HW = 16;
  std::vector<uint8_t> prop(P * HW, 0), clus(K * HW, 0);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 4; ++x) {
      if (x < 2) prop[y * 4 + x] = 1;
      if (y < 2) clus[y * 4 + x] = 1;
    }
  }  // proposal 1 stays empty
  uint8_t *dp = nullptr, *dc = nullptr;
  float* dout = nullptr;
  float iou[P * K], cov[P * K];
  bool ok = check(cudaMalloc(&dp, prop.size()), "cudaMalloc") && check(cudaMalloc(&dc, clus.size()), "cudaMalloc") &&
            check(cudaMalloc(&dout, sizeof(iou)), "cudaMalloc") &&
            check(cudaMemcpy(dp, prop.data(), prop.size(), cudaMemcpyHostToDevice), "copy") &&
            check(cudaMemcpy(dc, clus.data(), clus.size(), cudaMemcpyHostToDevice), "copy") &&
            check(static_cast<cudaError_t>(moca_mask_match_u8(dp, dc, dout, B, P, K, HW, 0, 0)), "mask iou") &&
            check(cudaMemcpy(iou, dout, sizeof(iou), cudaMemcpyDeviceToHost), "copy") &&
            check(static_cast<cudaError_t>(moca_mask_match_u8(dp, dc, dout, B, P, K, HW, 1, 0)), "coverage") &&
            check(cudaMemcpy(cov, dout, sizeof(cov), cudaMemcpyDeviceToHost), "copy");
  cudaFree(dp);
  cudaFree(dc);
  cudaFree(dout);
  if (!ok) return false;
  // IoU(left, top) = 4 / 12; left vs empty = 0 / 8; empty vs anything = 0.
  const float want_iou[P * K] = {4.0f / 12.0f, 0.0f, 0.0f, 0.0f};
  const float want_cov[P * K] = {0.5f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < P * K; ++i) {
    if (std::fabs(iou[i] - want_iou[i]) > 1e-6f || std::fabs(cov[i] - want_cov[i]) > 1e-6f) {
      std::fprintf(stderr, "mask case %d: iou %f (want %f) coverage %f (want %f)\n", i, iou[i], want_iou[i], cov[i],
                   want_cov[i]);
      return false;
    }
  }
  std::printf("mask iou: ok\n");
  return true;
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("skipped: no GPU\n");
    return kSkip;
  }
  const bool ok = kmeans_case() && mask_case();
  std::printf(ok ? "moca_rt kernels smoke test passed\n" : "moca_rt kernels smoke test FAILED\n");
  return ok ? 0 : 1;
}
