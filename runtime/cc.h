/* The second CPU compiler tier: the system C compiler (`cc`, or $DETINFER_CC) builds the same
 * generated C that libtcc builds, with optimisation, into a shared object that is dlopen'ed.
 *
 * Both tiers must give the same bits, so the flags allow only what cannot change a result:
 * optimisation and vectorisation across independent outputs, never contraction
 * (-ffp-contract=off: no FMA even where -march has it) and never reassociation (no -ffast-math,
 * whose -fassociative-math would let the compiler split an in-order chain into partial sums).
 * -fno-math-errno only lets sqrtf be the sqrtss instruction instead of a libm call; both are
 * correctly rounded (IEEE 754), so the value is the same.
 *
 * The compiler's identity (its --version line) and every flag, in order, go into the cache key:
 * a different compiler or flag set is a different kernel. */
#ifndef DI_CC_H
#define DI_CC_H
#include <stdbool.h>
#include <stddef.h>
#include "base/err.h"

typedef struct di_cc_code di_cc_code;

/* Probes the compiler once per process (runs `CC --version` and a tiny test build). false, with
 * the reason in err, when there is none that works. Thread safe. */
bool di_cc_available(di_err *err);
/* "gcc (Debian 12.2.0-14+deb12u1) 12.2.0": the first line of --version (after a probe). */
const char *di_cc_version(void);
/* The flags every kernel is built with, in order, and their count (after a probe). */
int di_cc_flags(const char *const **flags);
/* The command run: $DETINFER_CC, else "cc". */
const char *di_cc_command(void);

/* Compiles src to a shared object (malloc'd bytes); the compiler's output is in err on failure. */
int di_cc_compile_so(const char *src, const char *label, void **so, size_t *len, di_err *err);
/* Loads a shared object produced above and resolves `symbol`. */
int di_cc_load_so(const void *so, size_t len, const char *symbol, di_cc_code **code, void **fn, di_err *err);
void *di_cc_symbol(di_cc_code *code, const char *symbol);
void di_cc_free(di_cc_code *code);

#endif
