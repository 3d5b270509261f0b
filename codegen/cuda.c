/* CUDA backend prelude (NVRTC). A block's threads stride over the same index ranges the C
 * backend loops over; DI_SYNC is a barrier. Built with --fmad=false in the exact profile,
 * so no multiply-add is contracted and every operation rounds as in C. */
#include "codegen/lower.h"

const char di_cuda_mma_helpers[] =
    "/* tensor-core helpers (codegen/cuda.c) */\n"
    "/* two floats -> bf16x2, round to nearest even; lo in the low half (the lower address) */\n"
    "DI_FN unsigned di_pack_bf16x2(float lo, float hi)\n"
    "{\n"
    "    unsigned d;\n"
    "    asm(\"cvt.rn.bf16x2.f32 %0, %1, %2;\\n\" : \"=r\"(d) : \"f\"(hi), \"f\"(lo));\n"
    "    return d;\n"
    "}\n"
    "/* c += a . b on one 16 x 8 fragment, k = 16, f32 accumulate */\n"
    "DI_FN void di_mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)\n"
    "{\n"
    "    asm volatile(\"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, \"\n"
    "                 \"{%8, %9}, {%0, %1, %2, %3};\\n\"\n"
    "                 : \"+f\"(c[0]), \"+f\"(c[1]), \"+f\"(c[2]), \"+f\"(c[3])\n"
    "                 : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"r\"(b0), \"r\"(b1));\n"
    "}\n\n";

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
        "#define DI_MM_CG (THREADS * TILE_N)\n"
        "/* Every entry runs this before it reads or writes memory that another kernel writes or reads\n"
        " * (most open with it; the fast matmul first asks for its weights, which no kernel writes).\n"
        " * The runtime launches kernels on sm_90+ with programmatic stream serialization: a kernel\n"
        " * may be scheduled while the one before it in the stream still runs, and waits here until\n"
        " * that one has finished and its writes are visible; then it lets the kernel after it be\n"
        " * scheduled (which waits in turn). Only when blocks start moves; no operation or order does. */\n"
        "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
        "#define DI_GRID_ENTRY() asm volatile(\"griddepcontrol.wait;\\n\\tgriddepcontrol.launch_dependents;\" ::: \"memory\")\n"
        "#else\n"
        "#define DI_GRID_ENTRY() ((void)0)\n"
        "#endif\n");
}
