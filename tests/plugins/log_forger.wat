;; Logs text with line breaks that would start a forged record, then accepts.
(module
  (import "exdaas" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "first\0a{\"level\":\"ERROR\",\"fields\":{\"message\":\"FORGED admin login\"}}\0d\0aFORGED line")
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64)
    (call $log (i32.const 2) (i32.const 16) (i32.const 78))
    (i64.const 0)))
