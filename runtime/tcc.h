/* libtcc (linked statically): C source -> ELF object -> code in memory.
 * Generated units include no headers and are linked -nostdlib; the only outside symbol is
 * sqrtf, taken from the host's libm. tcc's runtime dir (libtcc1.a) comes from
 * DETINFER_TCC_DIR, else the Debian default; it is needed only if tcc emits helper calls. */
#ifndef DI_TCC_H
#define DI_TCC_H
#include <stddef.h>
#include "base/err.h"

#define DI_TCC_IDENTITY "tcc-0.9.27 x86_64-linux-gnu -nostdlib"

typedef struct di_tcc_code di_tcc_code;

/* Compiles src to a relocatable object (malloc'd bytes). */
int di_tcc_compile_obj(const char *src, const char *label, void **obj, size_t *len, di_err *err);
/* Loads an object produced above and resolves `symbol`. */
int di_tcc_load_obj(const void *obj, size_t len, const char *symbol, di_tcc_code **code, void **fn, di_err *err);
void di_tcc_free(di_tcc_code *code);
/* Another symbol of a loaded object (NULL if absent). */
void *di_tcc_symbol(di_tcc_code *code, const char *symbol);

#endif
