;; Replaces the value with one larger than the server's value limit (64 bytes in the test).
(module
  (memory (export "memory") 2)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 1024))
  (data (i32.const 16) "{\22action\22:\22replace\22,\22value\22:\22xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\22}")
  (func (export "exdaas_on_write") (param $op i32) (param $buf i32) (param $k i32) (param $v i32) (param $o i32) (param $c i32) (param $now i64) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 119))))
