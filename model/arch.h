/* The architectures of model/arch.def as values. */
#ifndef DI_ARCH_H
#define DI_ARCH_H
#include <stdbool.h>
#include <stddef.h>

typedef enum { DI_ROPE_ADJACENT, DI_ROPE_HALFSPLIT } di_rope_form;
typedef enum { DI_ACT_SILU, DI_ACT_GELU_TANH } di_act;

typedef struct di_arch {
    const char *name;        /* general.architecture, and the prefix of its metadata keys */
    di_rope_form rope;
    di_act act;
    bool qkv_bias, qk_norm, post_norms, embed_scale, head_dim_key;
    int swa_period;
    float swa_rope_base;
} di_arch;

/* The entry whose name is the n bytes at name (GGUF strings are not NUL-terminated), or NULL. */
const di_arch *di_arch_find(const char *name, size_t n);
/* "llama, mistral, qwen2, qwen3, gemma3", for messages. */
const char *di_arch_names(void);

#endif
