;; exdaas_alloc answers 0, the ABI's "cannot allocate": the host must fail
;; the call instead of copying the input to address 0.
(module
  (memory (export "memory") 1)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64) (i64.const 0)))
