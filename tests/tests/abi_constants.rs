//! The plugin ABI's constants are written down in five places: the server,
//! the Rust SDK, the C header, the AssemblyScript SDK and ABI.md. This test
//! reads all five and fails when any of them disagrees with the server.
#![allow(clippy::unwrap_used)]

mod common;

use common::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap()
}

/// The integer after `prefix` on the line that starts with it (after
/// leading spaces), e.g. `pub const OP_PUT: i32 = ` or `#define X `.
fn number_after(text: &str, prefix: &str, file: &str) -> i64 {
    let line = text
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{file}: no line starting with {prefix:?}"));
    let rest = line[prefix.len()..].trim();
    let digits: String = rest
        .trim_start_matches('(')
        .chars()
        .take_while(|c| *c == '-' || c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{file}: {line:?} has no integer"))
}

/// The string constant `name` of the server's `abi.rs`.
fn server_str(abi: &str, name: &str) -> String {
    let prefix = format!("pub const {name}: &str = \"");
    let line = abi
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("abi.rs has no {name}"));
    line[prefix.len()..].trim_end_matches("\";").to_owned()
}

#[test]
fn every_copy_of_the_abi_constants_agrees_with_the_server() {
    let server = read("server/src/plugin/abi.rs");
    let rust = read("guest-sdk/src/lib.rs");
    let c = read("guest-sdk/include/exdaas.h");
    let ts = read("guest-sdk/assemblyscript/assembly/abi.ts");
    let ts_sdk = read("guest-sdk/assemblyscript/assembly/index.ts");
    let doc = read("guest-sdk/ABI.md");

    for (name, c_name) in [
        ("ABI_VERSION", "EXDAAS_ABI_VERSION"),
        ("OP_PUT", "EXDAAS_OP_PUT"),
        ("OP_DELETE", "EXDAAS_OP_DELETE"),
        ("ABSENT", "EXDAAS_ABSENT"),
    ] {
        let want = number_after(&server, &format!("pub const {name}: i32 = "), "abi.rs");
        let rust_got = number_after(&rust, &format!("pub const {name}: i32 = "), "lib.rs");
        let c_got = number_after(&c, &format!("#define {c_name} "), "exdaas.h");
        let ts_got = number_after(&ts, &format!("export const {name}: i32 = "), "abi.ts");
        assert_eq!(rust_got, want, "Rust SDK {name}");
        assert_eq!(c_got, want, "C header {c_name}");
        assert_eq!(ts_got, want, "AssemblyScript SDK {name}");
    }
    let version = number_after(&server, "pub const ABI_VERSION: i32 = ", "abi.rs");
    assert!(
        doc.contains(&format!("# exdaas plugin ABI, version {version}")),
        "ABI.md names another version"
    );

    // Log levels: the Rust SDK's enum, the C header and the AssemblyScript SDK.
    for (level, rust_name, c_name, ts_name) in [
        (0, "Error = ", "EXDAAS_LOG_ERROR ", "LOG_ERROR: i32 = "),
        (1, "Warn = ", "EXDAAS_LOG_WARN ", "LOG_WARN: i32 = "),
        (2, "Info = ", "EXDAAS_LOG_INFO ", "LOG_INFO: i32 = "),
        (3, "Debug = ", "EXDAAS_LOG_DEBUG ", "LOG_DEBUG: i32 = "),
    ] {
        assert_eq!(
            number_after(&rust, rust_name, "lib.rs"),
            level,
            "{rust_name}"
        );
        assert_eq!(
            number_after(&c, &format!("#define {c_name}"), "exdaas.h"),
            level
        );
        assert_eq!(
            number_after(&ts, &format!("export const {ts_name}"), "abi.ts"),
            level
        );
    }
    assert!(doc.contains("levels 0 error, 1 warn, 2 info, 3 debug"));

    // Export and import names.
    for name in ["EXPORT_ABI_VERSION", "EXPORT_ALLOC", "EXPORT_ON_WRITE"] {
        let export = server_str(&server, name);
        assert!(
            rust.contains(&format!("fn {export}(")),
            "Rust SDK lacks {export}"
        );
        assert!(c.contains(&export), "C header lacks {export}");
        assert!(
            ts_sdk.contains(&format!("export function {export}(")),
            "AssemblyScript SDK lacks {export}"
        );
        assert!(
            doc.contains(&format!("`{export}`")),
            "ABI.md lacks {export}"
        );
    }
    let module = server_str(&server, "HOST_MODULE");
    let log = server_str(&server, "HOST_LOG");
    assert!(rust.contains(&format!("wasm_import_module = \"{module}\"")));
    assert!(ts_sdk.contains(&format!("@external(\"{module}\", \"{log}\")")));
    assert!(c.contains(&format!(
        "import_module(\"{module}\"), import_name(\"{log}\")"
    )));
}
