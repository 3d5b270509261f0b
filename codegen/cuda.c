/* CUDA backend prelude (NVRTC). A block's threads stride over the same index ranges the C
 * backend loops over; DI_SYNC is a barrier. Built with --fmad=false in the exact profile,
 * so no multiply-add is contracted and every operation rounds as in C. */
#include "codegen.h"

void di_prelude_cuda(di_str *out)
{
    di_str_puts(out,
        "/* backend: CUDA (NVRTC) */\n"
        "#define DI_FN __device__ __forceinline__\n"
        "#define DI_SHARED __shared__\n"
        "#define DI_SYNC() __syncthreads()\n"
        "#define DI_FOR_THREADS(t, n) for (long t = threadIdx.x; t < (long)(n); t += blockDim.x)\n"
        "#define DI_MAP_FOR(i, n) for (long i = (long)bx * blockDim.x + threadIdx.x; i < (long)(n); "
        "i += (long)gridDim.x * blockDim.x)\n"
        "#define DI_ONE_THREAD if (threadIdx.x == 0)\n"
        "#define DI_AS_F32(x) __uint_as_float(x)\n"
        "#define DI_AS_U32(x) __float_as_uint(x)\n"
        "#define di_sqrtf(x) __fsqrt_rn(x)\n"
        "#define DI_MM_RT 1\n"
        "#define DI_MM_CG (THREADS * TILE_N)\n");
}
