/* The architecture table (model/arch.def). */
#include "model/arch.h"
#include <string.h>

static const di_arch archs[] = {
#define ARCH(id, name_, ...) {.name = name_, __VA_ARGS__},
#include "model/arch.def"
};

const di_arch *di_arch_find(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        if (strlen(archs[i].name) == n && !memcmp(archs[i].name, name, n)) return &archs[i];
    return NULL;
}

/* ", llama, mistral, ..." without its leading separator */
const char *di_arch_names(void)
{
    static const char list[] =
#define ARCH(id, name, ...) ", " name
#include "model/arch.def"
        ;
    return list + 2;
}
