/* Placeholder until the tensor-core lowering lands: the fast profile takes no separate
 * matmul path yet (di_matmul_fast_applies is false), so fast == exact lowering with fmad. */
#include "matmul_fast.h"

bool di_matmul_fast_applies(const di_spec *s, const di_specialization *p, di_backend_kind b)
{
    (void)s; (void)p; (void)b;
    return false;
}

int di_lower_matmul_fast(di_str *o, const di_spec *s, const di_specialization *p, const char *name, di_err *err)
{
    (void)o; (void)p; (void)name;
    return di_fail(err, DI_ESPEC, "spec %s: no tensor-core lowering", s->name);
}

int di_geometry_matmul_fast(const di_spec *s, const di_specialization *p, long rows, di_geometry g[2],
                            size_t *workspace_bytes, di_err *err)
{
    (void)p; (void)rows; (void)g; (void)workspace_bytes;
    return di_fail(err, DI_ESPEC, "spec %s: no tensor-core lowering", s->name);
}
