/*
 * Validator in C: rejects values larger than config.max_bytes (default 4096).
 * Build: see examples/max-size/README.md or scripts/build-plugins.sh.
 */
#include "exdaas.h"

EXDAAS_EXPORT(exdaas_abi_version)
int32_t exdaas_abi_version(void) { return EXDAAS_ABI_VERSION; }

EXDAAS_EXPORT(exdaas_alloc)
int32_t exdaas_alloc(int32_t len) { return exdaas_input_buffer(len); }

static char verdict[256];

static int32_t append(int32_t at, const char *s) {
    while (*s && at < (int32_t)sizeof verdict) verdict[at++] = *s++;
    return at;
}

EXDAAS_EXPORT(exdaas_on_write)
int64_t exdaas_on_write(int32_t op, int32_t buf, int32_t key_len, int32_t value_len,
                        int32_t old_len, int32_t config_len, int64_t now_ms) {
    (void)now_ms;
    if (op != EXDAAS_OP_PUT || value_len < 0) return EXDAAS_ACCEPT;
    const char *config = (const char *)(uintptr_t)buf + key_len + value_len + (old_len > 0 ? old_len : 0);
    int64_t max = exdaas_config_int(config, config_len, "max_bytes", 4096);
    if (value_len <= max) return EXDAAS_ACCEPT;

    int32_t n = append(0, "{\"action\":\"reject\",\"code\":\"too_large\",\"message\":\"value is ");
    n += exdaas_format_u64((uint64_t)value_len, verdict + n);
    n = append(n, " bytes; the limit is ");
    n += exdaas_format_u64((uint64_t)max, verdict + n);
    n = append(n, "\"}");
    const char *line = "rejected an oversized value";
    exdaas_log(EXDAAS_LOG_INFO, line, exdaas_strlen(line));
    return exdaas_verdict(verdict, n);
}
