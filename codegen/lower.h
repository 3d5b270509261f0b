/* Class lowerings: the body of a kernel, as text valid in both backends' preludes. */
#ifndef DI_LOWER_H
#define DI_LOWER_H
#include "codegen.h"

int di_lower_body(di_str *o, const di_spec *s, const di_specialization *p, di_err *err);
const char *di_ctype(di_dtype t);

#endif
