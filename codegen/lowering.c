/* Which lowering runs a spec, and the small pieces every lowering's entries and plans share. */
#include "codegen/lowering.h"
#include <stdio.h>
#include <string.h>

/* First match wins. The vendor paths come first (they exist only in the vendor profile), then
 * the tensor-core paths (fast profile on CUDA, for the shapes they take), then the class
 * lowering, which takes everything else on both backends. */
static const di_lowering *const lowerings[] = {
    &di_lowering_vendor_cublaslt, &di_lowering_vendor_ksplits, &di_lowering_vendor_kv_split,
    &di_lowering_matmul_fast_f32x, &di_lowering_matmul_fast, &di_lowering_attention_fast, &di_lowering_class,
};

const di_lowering *di_lowering_for(const di_spec *s, const di_specialization *p, const di_target *t)
{
    for (size_t i = 0; i < sizeof lowerings / sizeof lowerings[0]; i++)
        if (lowerings[i]->applies(s, p, t)) return lowerings[i];
    return &di_lowering_class;
}

di_target di_target_cuda_default(void)
{
    di_target t = {.backend = DI_BACKEND_CUDA, .sm_count = 132};
    snprintf(t.arch, sizeof t.arch, "sm_90a");
    return t;
}

di_target di_target_c(void) { return (di_target){.backend = DI_BACKEND_C}; }

void di_entry_spec_params(const di_spec *s, di_entry *e)
{
    e->nparams = 0;
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) {
        const di_arg *a = &s->args[i];
        e->params[e->nparams++] = a->role != DI_ROLE_SCALAR ? DI_P_PTR : a->dtype == DI_I32 ? DI_P_I32 : DI_P_F32;
    }
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++) e->params[e->nparams++] = DI_P_LONG;
}

void di_launch_add(di_launch *l, di_arg_kind kind, int index, size_t offset, long value)
{
    if (l->nargs >= DI_MAX_PARAMS) return;   /* the runtime's parameter check reports the count */
    l->args[l->nargs++] = (di_pa){.kind = kind, .index = index, .offset = offset, .value = value};
}

void di_launch_spec_args(const di_spec *s, di_launch *l)
{
    for (int i = 0; i < DI_MAX_ARGS && s->args[i].name; i++) di_launch_add(l, DI_A_ARG, i, 0, 0);
    for (int i = 0; i < DI_MAX_SIZES && s->sizes[i]; i++) di_launch_add(l, DI_A_SIZE, i, 0, 0);
}

void di_plan_entry(const di_spec *s, di_plan *pl, const di_geometry *g)
{
    memset(pl, 0, sizeof *pl);
    pl->n = 1;
    di_launch *l = &pl->l[0];
    l->run = DI_RUN_ENTRY;
    memcpy(l->grid, g->grid, sizeof l->grid);
    memcpy(l->block, g->block, sizeof l->block);
    l->smem = g->smem;
    di_launch_spec_args(s, l);
}
