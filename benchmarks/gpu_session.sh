#!/usr/bin/env bash
# Every GPU check of the project in one call, for a session that is lent a GPU machine
# (see the device tool's METHOD.md: few full calls beat many small ones).
#
# Prepare on the development machine, once (the GPU machine cannot reach PyPI; its image has
# torch, triton, cupy, onnx, onnxruntime but no PyAV or pycocotools):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl av==18.1.0 pycocotools==2.0.11
#
# Then call the device tool with carry [".whl"] and the command
#
#   bash benchmarks/gpu_session.sh
#
# Results land in $OUT (logs) and benchmarks/results/ (copied to $OUT/results): commit the CSVs
# and kernels_cuda_targets.txt (the PASS/FAIL verdicts of issue #4's targets).
set -uo pipefail
OUT=${OUT:-/tmp/moca_gpu_out}
mkdir -p "$OUT/results"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1 \
    || { echo "install failed"; tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"

# One device call may run 600 s and a session has 15 minutes of device time in all (start-up
# included): every step gets what is left of MOCA_GPU_BUDGET_S (counted from the script's start)
# and is stopped (SIGINT, then SIGKILL 10 s later) when that is spent; a step with under 30 s left
# is skipped and named. The steps run in the order of what the open issues need most.
BUDGET_S=${MOCA_GPU_BUDGET_S:-540}
status=0
step() {  # name, command...
    local name=$1; shift
    local left=$((BUDGET_S - SECONDS))
    if [ $left -lt 30 ]; then
        echo "== $name skipped: ${left} s of the ${BUDGET_S} s budget left"
        status=1
        return
    fi
    echo "== $name (budget left ${left} s)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$left" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - t0)) s$([ $rc -eq 124 ] && echo ' (stopped: budget spent)')"
    tail -5 "$OUT/$name.log"
    [ $rc -eq 0 ] || status=1
}

# Correctness first: the test modules with CUDA tests (those skip on CPU), then the huge presets
# (bf16 eager and compiled before fp32: the fastest-path candidates first), then the rest.
# (The Triton-interpreter child suites skip there, with the reason, if the image's Triton < 3.7
# meets numpy >= 2.4; the build test also compiles every kernel spec with the image's Triton.)
step gpu_tests python3 -m pytest -q -p no:cacheprovider -ra \
    tests/test_kernels_pma.py tests/test_kernels_kmeans.py tests/test_kernels_iou.py \
    tests/test_kernels_build.py \
    tests/test_preprocess.py tests/test_moca.py tests/test_sam.py tests/test_pipeline.py \
    tests/test_infer.py tests/test_benchmark_pipeline.py
# Huge presets (random weights: ImageBind-H + AdaAV, SAM ViT-H, 16 x 16 grid) on every engine at
# batch 1 and 8 (issue #11): eager fp32 and bf16, torch-compile bf16 (compile time in the
# compile_s column, apart from the run), onnxruntime on units exported here (fp16, CUDA provider
# if the image's onnxruntime has it: the build notes the provider really used). One CSV each.
huge="--preset moca_huge --sam-preset sam_vit_h --points-per-side 16 --batch 1,8 --frames 16"
step huge_torch_bf16 python3 benchmarks/pipeline.py --device cuda --precision bf16 $huge \
    --engine torch --out benchmarks/results/pipeline_huge_cuda_torch_bf16.csv
step huge_compile_bf16 python3 benchmarks/pipeline.py --device cuda --precision bf16 $huge \
    --engine torch-compile --out benchmarks/results/pipeline_huge_cuda_compile_bf16.csv
step huge_torch_fp32 python3 benchmarks/pipeline.py --device cuda --precision fp32 $huge \
    --engine torch --out benchmarks/results/pipeline_huge_cuda_torch_fp32.csv
step cmake bash -c 'cmake -S . -B build/gpu -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build/gpu -j 8 && (cd build/gpu && ctest --output-on-failure)'
# Speed: kernels at the real shapes (fp32 + bf16), then the end-to-end pipeline.
step kernels_bench python3 benchmarks/kernels.py --device cuda --dtypes float32,bfloat16,float16 \
    --out benchmarks/results/kernels_cuda.csv
cat benchmarks/results/kernels_cuda_targets.txt 2>/dev/null
step pipeline_bench python3 benchmarks/pipeline.py --device cuda --precision bf16 --batch 1,8,32 \
    --frames 64 --out benchmarks/results/pipeline_cuda.csv
# onnxruntime only with its CUDA provider: ImageBind-H in fp16 on the CPU provider would take the
# session's remaining minutes.
if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
step huge_export_fp16 bash -c 'for u in audio vision; do python3 -m moca_rt.export.create_onnx \
    --preset moca_huge --precision fp16 --unit $u --audio-clips 1 --out /tmp/huge_onnx || exit 1; done'
step huge_ort_fp16 python3 benchmarks/pipeline.py --device cuda --precision fp16 $huge \
    --engine onnxruntime --engine-dir /tmp/huge_onnx \
    --out benchmarks/results/pipeline_huge_cuda_ort_fp16.csv
else
    echo "== huge_ort_fp16 skipped: this image's onnxruntime has no CUDAExecutionProvider"
fi
cp benchmarks/results/*cuda* "$OUT/results/" 2>/dev/null
echo "== done (status $status); logs and CSVs in $OUT"
exit $status
