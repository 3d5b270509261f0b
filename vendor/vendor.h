/* The vendor profile's lowerings (vendor/vendor.c) and the policies they follow: the split
 * choices engines make from the row count. Never used by the exact or fast profiles. */
#ifndef DI_VENDOR_H
#define DI_VENDOR_H
#include "codegen/lowering.h"

/* Split-K as engines pick it: few rows leave most of the machine idle, so K is split more
 * (8 splits for <= 4 rows, 4 for <= 32, 2 for <= 128, else 1). The choices, largest first. */
int di_vendor_matmul_ksplits(long rows);
int di_vendor_ksplit_choices(const int **counts);
/* Split-KV on the GPU: few rows, small splits (more of them, to fill the machine): 16
 * positions for <= 8 rows, 32 for <= 64, else 64. The choices, smallest first. */
int di_vendor_attention_kv_split(long rows);
int di_vendor_kv_split_choices(const int **sizes);

#endif
