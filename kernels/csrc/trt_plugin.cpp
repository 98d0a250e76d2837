// Placeholder of the TensorRT plugin target (CMake option MOCA_RT_BUILD_TRT_PLUGIN, OFF by
// default). TensorRT cannot be installed in the environment this project is developed in, so
// no IPluginV3 for the k-means / mask IoU kernels is written or built yet; this file only proves
// that the kernels library links against TensorRT where it exists.
#include <NvInfer.h>

#include "moca_kernels.cuh"

extern "C" int moca_rt_trt_plugin_tensorrt_version() { return getInferLibVersion(); }
