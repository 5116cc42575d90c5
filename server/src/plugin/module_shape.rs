//! A module's shape, checked before it is compiled.
//!
//! The compiler's time and memory grow with what a module asks of it: a
//! 543 KB module with one function of 40,000 locals and 8,000 blocks made
//! cranelift take enough memory to have the server killed, and deeply
//! nested `loop`s compile in quadratic time (300 KB: over two minutes).
//! A validator or transform needs none of that, so a module whose
//! functions are past these bounds is refused, with the bound it broke,
//! before any compile starts. The defaults are far above any real plugin
//! (the examples' largest function has a few dozen locals and nests a
//! dozen deep).

use wasmparser::{Operator, Parser, Payload};

/// Bounds on a module's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleShape {
    /// Functions defined by the module.
    pub max_functions: u32,
    /// Locals of one function.
    pub max_function_locals: u32,
    /// Bytes of one function's body.
    pub max_function_bytes: u32,
    /// Blocks, loops and ifs open at once in one function.
    pub max_nesting: u32,
}

impl Default for ModuleShape {
    fn default() -> Self {
        Self {
            max_functions: 10_000,
            max_function_locals: 2_000,
            max_function_bytes: 256 * 1024,
            max_nesting: 256,
        }
    }
}

impl ModuleShape {
    /// Checks `wasm` against these bounds; the error says which one it
    /// broke and where. Only counts: whether the module is valid is for
    /// the compiler to say.
    pub fn check(&self, wasm: &[u8]) -> Result<(), String> {
        let mut functions = 0u32;
        for payload in Parser::new(0).parse_all(wasm) {
            // A malformed module is the compiler's to report, with its words.
            let Ok(payload) = payload else { return Ok(()) };
            let Payload::CodeSectionEntry(body) = payload else {
                continue;
            };
            functions += 1;
            if functions > self.max_functions {
                return Err(format!(
                    "the module defines more than {} functions",
                    self.max_functions
                ));
            }
            self.check_function(functions - 1, &body)?;
        }
        Ok(())
    }

    fn check_function(
        &self,
        index: u32,
        body: &wasmparser::FunctionBody<'_>,
    ) -> Result<(), String> {
        let bytes = body.range().len();
        if bytes > self.max_function_bytes as usize {
            return Err(format!(
                "function {index} is {bytes} bytes; at most {}",
                self.max_function_bytes
            ));
        }
        let mut locals = 0u64;
        if let Ok(mut reader) = body.get_locals_reader() {
            for _ in 0..reader.get_count() {
                let Ok((count, _)) = reader.read() else { break };
                locals += u64::from(count);
                if locals > u64::from(self.max_function_locals) {
                    return Err(format!(
                        "function {index} has more than {} locals",
                        self.max_function_locals
                    ));
                }
            }
        }
        let Ok(mut ops) = body.get_operators_reader() else {
            return Ok(());
        };
        let mut depth = 0u32;
        while !ops.eof() {
            let Ok(op) = ops.read() else { return Ok(()) };
            match op {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    if depth > self.max_nesting {
                        return Err(format!(
                            "function {index} nests blocks more than {} deep",
                            self.max_nesting
                        ));
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn module(body: &str) -> Vec<u8> {
        wat::parse_str(format!("(module (func {body}))")).unwrap()
    }

    #[test]
    fn bombs_are_refused_before_compiling() {
        let shape = ModuleShape::default();
        let nested = "(block ".repeat(300) + &")".repeat(300);
        let err = shape.check(&module(&nested)).unwrap_err();
        assert!(err.contains("nests blocks more than 256"), "{err}");
        let err = shape
            .check(&module("(local i32 i32) (local i64)"))
            .map(|_| ());
        assert!(err.is_ok());
        let many = "(local ".to_owned() + &"i32 ".repeat(2_001) + ")";
        let err = shape.check(&module(&many)).unwrap_err();
        assert!(err.contains("more than 2000 locals"), "{err}");
        let long = "(drop (i32.const 1)) ".repeat(100_000);
        let err = shape.check(&module(&long)).unwrap_err();
        assert!(err.contains("at most 262144"), "{err}");
        let few = ModuleShape {
            max_functions: 1,
            ..ModuleShape::default()
        };
        let two = wat::parse_str("(module (func) (func))").unwrap();
        assert!(few
            .check(&two)
            .unwrap_err()
            .contains("more than 1 functions"));
        // Exactly at the bounds is fine; so is nothing to check.
        let at = "(block ".repeat(256) + &")".repeat(256);
        assert!(shape.check(&module(&at)).is_ok());
        assert!(shape.check(b"not wasm").is_ok());
    }

    proptest::proptest! {
        /// Whatever the bytes, the check ends without panicking.
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = ModuleShape::default().check(&bytes);
            let mut wasm = b"\0asm\x01\0\0\0".to_vec();
            wasm.extend_from_slice(&bytes);
            let _ = ModuleShape::default().check(&wasm);
        }

        /// Blocks are counted exactly as deep as they were built.
        #[test]
        fn nesting_is_counted_exactly(depth in 0u32..600, bound in 1u32..600) {
            let nested = "(block ".repeat(depth as usize) + &")".repeat(depth as usize);
            let shape = ModuleShape { max_nesting: bound, ..ModuleShape::default() };
            proptest::prop_assert_eq!(shape.check(&module(&nested)).is_ok(), depth <= bound);
        }
    }

    #[test]
    fn every_example_plugin_fits_the_defaults() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dist");
        let Ok(entries) = std::fs::read_dir(&dist) else {
            return; // built by scripts/build-plugins.sh; checked end to end too
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let wasm = std::fs::read(&path).unwrap();
                let checked = ModuleShape::default().check(&wasm);
                assert!(checked.is_ok(), "{}: {checked:?}", path.display());
            }
        }
    }
}
