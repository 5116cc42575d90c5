;; Imports WASI, which exdaas does not provide: refused at load.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64) (i64.const 0)))
