// The plugin ABI's constants (guest-sdk/ABI.md). tests/tests/abi_constants.rs
// checks them against the server, the Rust SDK and the C header.

/** The ABI version this SDK implements; `exdaas_abi_version` returns it. */
export const ABI_VERSION: i32 = 1;
/** `op` of a put. */
export const OP_PUT: i32 = 0;
/** `op` of a delete (only for plugins with `run_on_delete`). */
export const OP_DELETE: i32 = 1;
/** Length the host passes for an absent value. */
export const ABSENT: i32 = -1;
/** Log levels of the host's `exdaas.log`. */
export const LOG_ERROR: i32 = 0;
export const LOG_WARN: i32 = 1;
export const LOG_INFO: i32 = 2;
export const LOG_DEBUG: i32 = 3;
