/* C backend prelude (libtcc, or the system cc: runtime/cc.h). Blocks run one after another on
 * a CPU worker; a block's "threads" become plain loops, in thread order, so per-output orders
 * are unchanged. No headers: the unit is compiled with -nostdlib; sqrtf comes from the host's
 * libm under libtcc and is the sqrtss instruction under cc (both correctly rounded, as IEEE
 * requires and NVRTC's __fsqrt_rn gives). The matmul's block shape is the C lowering's own
 * (lower.c, lower_matmul_c). */
#include "codegen/codegen.h"

void di_prelude_c(di_str *out)
{
    di_str_puts(out,
        "/* backend: C (libtcc) */\n"
        "float sqrtf(float);\n"
        "#define DI_FN static inline\n"
        "#define DI_KERNEL_ENTRY\n"
        "#define DI_SHARED\n"
        "#define DI_SYNC() ((void)0)\n"
        "#define DI_FOR_THREADS(t, n) for (long t = 0; t < (long)(n); t++)\n"
        "#define DI_MAP_FOR(i, n) for (long i = 0; i < (long)(n); i++)\n"
        "#define DI_ONE_THREAD if (1)\n"
        "#define DI_AS_F32(x) (((union { di_u32 u; float f; }){ .u = (x) }).f)\n"
        "#define DI_AS_U32(x) (((union { float f; di_u32 u; }){ .f = (x) }).u)\n"
        "#define di_sqrtf(x) sqrtf(x)\n");
}
