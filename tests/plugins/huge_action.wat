;; Answers a verdict whose action is 1 MiB of "A": the failure detail quoting
;; it must be cut short in the log and in the error body.
(module
  (memory (export "memory") 20)
  (func (export "exdaas_abi_version") (result i32) (i32.const 1))
  (func (export "exdaas_alloc") (param i32) (result i32) (i32.const 65536))
  (func (export "exdaas_on_write") (param i32 i32 i32 i32 i32 i32 i64) (result i64)
    (local $i i32)
    ;; {"action":"AAAA...A"} at 131072
    (i64.store (i32.const 131072) (i64.const 0x6e6f69746361227b)) ;; {"action
    (i32.store16 (i32.const 131080) (i32.const 0x3a22))          ;; ":
    (i32.store8 (i32.const 131082) (i32.const 0x22))              ;; "
    (local.set $i (i32.const 131083))
    (block $done
      (loop $fill
        (br_if $done (i32.ge_u (local.get $i) (i32.const 1179659)))
        (i32.store8 (local.get $i) (i32.const 0x41))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $fill)))
    (i32.store16 (i32.const 1179659) (i32.const 0x7d22))        ;; "}
    ;; (ptr << 32) | len, len = 1179661 - 131072
    (i64.or (i64.shl (i64.const 131072) (i64.const 32)) (i64.const 1048589))))
