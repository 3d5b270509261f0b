/* The hyper-parameters of a GGUF model file (di_config, model.h), read and checked before
 * anything is allocated from them: each value in range, the values consistent with each
 * other and with the file's tensors, as llama.cpp's loader checks them. A file that fails
 * would otherwise run and print wrong text with exit 0 (ids the token list cannot print,
 * layers silently skipped, a NaN epsilon that ends every request at once).
 * Needs nothing but the parsed file, so the fuzz harness runs it on every input. */
#ifndef DI_CONFIG_H
#define DI_CONFIG_H
#include "model/model.h"

/* DI_EUSAGE for an architecture not in model/arch.def, DI_EFORMAT naming the key or tensor at
 * fault for anything else. */
int di_config_read(const di_gguf *g, di_config *c, di_err *err);

#endif
