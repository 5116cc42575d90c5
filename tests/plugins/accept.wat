;; Accepts every write (used beside a metered plugin: fuel is per plugin).
(module
  (memory (export "memory") 1)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64) (i64.const 0)))
