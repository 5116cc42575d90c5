/*
 * exdaas plugin ABI, version 1, for C (see guest-sdk/ABI.md).
 *
 * Build a plugin without libc or WASI:
 *   clang --target=wasm32-unknown-unknown -O2 -nostdlib -Wl,--no-entry \
 *         -I guest-sdk/include -o my_plugin.wasm my_plugin.c
 *
 * A plugin defines three exports: exdaas_abi_version, exdaas_alloc and
 * exdaas_on_write (use EXDAAS_EXPORT), and may call exdaas_log.
 */
#ifndef EXDAAS_H
#define EXDAAS_H

#include <stdint.h>
#include <stddef.h>

#define EXDAAS_ABI_VERSION 1

/* exdaas_on_write's op argument. */
#define EXDAAS_OP_PUT 0
#define EXDAAS_OP_DELETE 1

/* Length passed for an absent value (a delete's new value, a new key's old one). */
#define EXDAAS_ABSENT (-1)

/* Log levels for exdaas_log. */
#define EXDAAS_LOG_ERROR 0
#define EXDAAS_LOG_WARN 1
#define EXDAAS_LOG_INFO 2
#define EXDAAS_LOG_DEBUG 3

/* Marks a function as a module export under its own name. */
#define EXDAAS_EXPORT(name) __attribute__((export_name(#name)))

/* The one host function: a log line tagged with the plugin and the key. */
__attribute__((import_module("exdaas"), import_name("log")))
void exdaas_log(int32_t level, const char *message, int32_t len);

/* The result of exdaas_on_write for "accept". */
#define EXDAAS_ACCEPT ((int64_t)0)

/* The result of exdaas_on_write pointing at a verdict JSON of len bytes,
 * e.g. {"action":"reject","code":"too_big","message":"..."}. The bytes must
 * stay valid after the function returns (use static storage). */
static inline int64_t exdaas_verdict(const char *json, int32_t len) {
    return (int64_t)(((uint64_t)(uintptr_t)json << 32) | (uint32_t)len);
}

/* An input buffer of at least len bytes at the end of linear memory, grown
 * with memory.grow when needed and reused between calls. Returns 0 when
 * memory cannot grow (the host then reports the failure). Use it as the body
 * of exdaas_alloc. */
static inline int32_t exdaas_input_buffer(int32_t len) {
    static uint32_t base = 0, capacity = 0;
    if (len < 0) return 0;
    if ((uint32_t)len > capacity) {
        uint32_t pages = ((uint32_t)len + 65535u) / 65536u;
        int32_t old = __builtin_wasm_memory_grow(0, pages);
        if (old < 0) return 0;
        base = (uint32_t)old * 65536u;
        capacity = pages * 65536u;
    }
    return (int32_t)base;
}

/* Length of a NUL-terminated string. */
static inline int32_t exdaas_strlen(const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Writes v in decimal at out (no terminator); returns the digits written. */
static inline int32_t exdaas_format_u64(uint64_t v, char *out) {
    char tmp[20];
    int32_t n = 0, i;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* Reads the non-negative integer member "name" of a flat JSON object such as
 * the plugin config {"max_bytes": 1024}; returns fallback when absent. A
 * deliberately small scanner: it does not understand nesting. */
static inline int64_t exdaas_config_int(const char *json, int32_t len, const char *name, int64_t fallback) {
    int32_t name_len = exdaas_strlen(name), i, j;
    for (i = 0; i + name_len + 2 <= len; i++) {
        if (json[i] != '"') continue;
        for (j = 0; j < name_len && json[i + 1 + j] == name[j]; j++) {}
        if (j != name_len || json[i + 1 + name_len] != '"') continue;
        i += name_len + 2;
        while (i < len && (json[i] == ' ' || json[i] == ':' || json[i] == '\t' || json[i] == '\n')) i++;
        if (i >= len || json[i] < '0' || json[i] > '9') return fallback;
        int64_t v = 0;
        while (i < len && json[i] >= '0' && json[i] <= '9') v = v * 10 + (json[i++] - '0');
        return v;
    }
    return fallback;
}

#endif /* EXDAAS_H */
