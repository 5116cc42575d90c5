;; Traps immediately.
(module
  (memory (export "memory") 2)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "exdaas_on_write") (param $op i32) (param $buf i32) (param $k i32) (param $v i32) (param $o i32) (param $c i32) (param $now i64) (result i64)
    unreachable))
