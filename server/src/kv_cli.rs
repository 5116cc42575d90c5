//! `exdaas kv`: the command-line client for the key-value API, in the
//! manner of `etcdctl get/put` and `consul kv`: one command per request,
//! JSON on stdout, the server's error on stderr, and an exit code a script
//! can branch on. `watch` joins here when that route exists.

use bytes::Bytes;
use clap::Subcommand;
use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::admin_client;

/// Exit codes, beyond 0 for success and 1 for anything else.
pub mod exit {
    /// The key does not exist (404).
    pub const NOT_FOUND: u8 = 3;
    /// A condition (`--if-version`, `--if-absent`) did not hold (412, 409).
    pub const CONFLICT: u8 = 4;
    /// A plugin rejected the write, or the value was refused (422, 400, 413).
    pub const REJECTED: u8 = 5;
    /// No or an insufficient token (401, 403).
    pub const DENIED: u8 = 6;
}

/// The most of one answer `exdaas kv` reads: above the largest a server
/// gives (a multi-get's 16 MiB).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Characters a key keeps unescaped in a path.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One `exdaas kv` request.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (`{"key","version","value"}`, or the value alone with --raw).
    Get {
        /// The key.
        key: String,
        /// Print the stored value exactly, nothing else.
        #[arg(long)]
        raw: bool,
    },
    /// Store a JSON value under a key (`-` reads it from standard input).
    Put {
        /// The key.
        key: String,
        /// The JSON value, or `-` for standard input.
        value: String,
        /// Only if the key is at this version (compare-and-set).
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Only if the key does not exist yet.
        #[arg(long)]
        if_absent: bool,
        /// Expire the key this long after the write (30s, 15m, 2h, 7d).
        #[arg(long, value_name = "TTL")]
        ttl: Option<String>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Only if the key is at this version.
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
    },
    /// Patch a key's value: a merge patch (RFC 7396), or with --json-patch
    /// a JSON patch (RFC 6902); `-` reads it from standard input. Prints
    /// the value as stored.
    Patch {
        /// The key.
        key: String,
        /// The patch, or `-` for standard input.
        patch: String,
        /// The patch is a JSON patch (an array of operations).
        #[arg(long)]
        json_patch: bool,
        /// Only if the key is at this version.
        #[arg(long, value_name = "VERSION", conflicts_with = "create")]
        if_version: Option<u64>,
        /// Create the key from the patch if it does not exist (and only then).
        #[arg(long)]
        create: bool,
        /// Expire the key this long after the write (default: keep its expiry).
        #[arg(long, value_name = "TTL")]
        ttl: Option<String>,
    },
    /// Add to the integer at a JSON pointer in a key's value, creating it
    /// as 0 when absent; prints `{"key","version","path","value"}`.
    Incr {
        /// The key.
        key: String,
        /// JSON pointer to the number (default: the whole value).
        #[arg(long, default_value = "")]
        path: String,
        /// What to add (negative subtracts).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        /// Expire the key this long after the write (default: keep its expiry).
        #[arg(long, value_name = "TTL")]
        ttl: Option<String>,
        /// With --ttl: only where the key has no expiry yet (a window that
        /// starts with its first increment).
        #[arg(long, requires = "ttl")]
        keep_ttl: bool,
    },
    /// Print several keys, all as of one revision.
    Mget {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run a transaction from a JSON file (`-`: standard input), as
    /// `POST /v1/txn` takes it. Exits 0 when its compares held, 4 when the
    /// failure branch ran.
    Txn {
        /// The file.
        file: String,
    },
    /// List keys in order (`--raw`: one key per line).
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most keys to print (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this key (a previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// Include values.
        #[arg(long)]
        values: bool,
        /// One key per line instead of JSON.
        #[arg(long)]
        raw: bool,
    },
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// The process exit code.
    pub code: u8,
    /// For standard output.
    pub stdout: String,
    /// For standard error.
    pub stderr: String,
}

fn key_path(key: &str) -> String {
    format!("/v1/kv/{}", utf8_percent_encode(key, KEY_SAFE))
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

/// `?ttl=...` for a write, or nothing.
fn ttl_query(ttl: Option<&str>) -> String {
    ttl.map_or_else(String::new, |ttl| {
        format!("?{}", query(&[("ttl", ttl.to_owned())]))
    })
}

/// The exit code for a status.
pub fn exit_code(status: u16) -> u8 {
    match status {
        200..=299 => 0,
        404 => exit::NOT_FOUND,
        409 | 412 => exit::CONFLICT,
        400 | 413 | 415 | 422 => exit::REJECTED,
        401 | 403 => exit::DENIED,
        _ => 1,
    }
}

/// Sends one command to the server at `addr`.
pub async fn run(
    addr: &admin_client::Target,
    token: Option<&str>,
    command: KvCommand,
    stdin: impl FnOnce() -> std::io::Result<String>,
) -> anyhow::Result<Outcome> {
    let mut headers: Vec<(&str, String)> = Vec::new();
    let (method, path, body, raw) = match &command {
        KvCommand::Get { key, raw } => (Method::GET, key_path(key), Bytes::new(), *raw),
        KvCommand::Put {
            key,
            value,
            if_version,
            if_absent,
            ttl,
        } => {
            let value = if value == "-" {
                stdin()?
            } else {
                value.clone()
            };
            headers.push(("content-type", "application/json".into()));
            if let Some(v) = if_version {
                headers.push(("if-match", format!("\"{v}\"")));
            }
            if *if_absent {
                headers.push(("if-none-match", "*".into()));
            }
            let path = key_path(key) + &ttl_query(ttl.as_deref());
            (Method::PUT, path, Bytes::from(value), false)
        }
        KvCommand::Delete { key, if_version } => {
            if let Some(v) = if_version {
                headers.push(("if-match", format!("\"{v}\"")));
            }
            (Method::DELETE, key_path(key), Bytes::new(), false)
        }
        KvCommand::Patch {
            key,
            patch,
            json_patch,
            if_version,
            create,
            ttl,
        } => {
            let patch = if patch == "-" {
                stdin()?
            } else {
                patch.clone()
            };
            let media = if *json_patch {
                "application/json-patch+json"
            } else {
                "application/merge-patch+json"
            };
            headers.push(("content-type", media.into()));
            if let Some(v) = if_version {
                headers.push(("if-match", format!("\"{v}\"")));
            }
            if *create {
                headers.push(("if-none-match", "*".into()));
            }
            let path = key_path(key) + &ttl_query(ttl.as_deref());
            (Method::PATCH, path, Bytes::from(patch), false)
        }
        KvCommand::Incr {
            key,
            path,
            by,
            ttl,
            keep_ttl,
        } => {
            let mut pairs = vec![
                ("op", "incr".into()),
                ("path", path.clone()),
                ("by", by.to_string()),
            ];
            if let Some(ttl) = ttl {
                pairs.push(("ttl", ttl.clone()));
            }
            if *keep_ttl {
                pairs.push(("keep_ttl", "true".into()));
            }
            let q = query(&pairs);
            (
                Method::POST,
                format!("{}?{q}", key_path(key)),
                Bytes::new(),
                false,
            )
        }
        KvCommand::Mget { keys } => {
            headers.push(("content-type", "application/json".into()));
            let body = serde_json::json!({ "keys": keys }).to_string();
            (Method::POST, "/v1/kv/get".into(), Bytes::from(body), false)
        }
        KvCommand::Txn { file } => {
            let body = if file == "-" {
                stdin()?
            } else {
                std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?
            };
            headers.push(("content-type", "application/json".into()));
            (Method::POST, "/v1/txn".into(), Bytes::from(body), false)
        }
        KvCommand::List {
            prefix,
            limit,
            after,
            values,
            raw,
        } => {
            let mut pairs = vec![("prefix", prefix.clone()), ("limit", limit.to_string())];
            if let Some(after) = after {
                pairs.push(("after", after.clone()));
            }
            if *values {
                pairs.push(("values", "true".into()));
            }
            (
                Method::GET,
                format!("/v1/kv?{}", query(&pairs)),
                Bytes::new(),
                *raw,
            )
        }
    };
    let answer =
        admin_client::send(addr, method, &path, token, &headers, body, MAX_ANSWER_BYTES).await?;
    let code = exit_code(answer.status);
    if code != 0 {
        return Ok(Outcome {
            code,
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&answer.body).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    if let KvCommand::Txn { .. } = command {
        let answer: serde_json::Value = serde_json::from_str(&text)?;
        let code = if answer["succeeded"] == true {
            0
        } else {
            exit::CONFLICT
        };
        return Ok(Outcome {
            code,
            stdout: text,
            stderr: String::new(),
        });
    }
    let stdout = match command {
        KvCommand::Get { key, .. } if !raw => {
            let version = answer
                .etag
                .as_deref()
                .and_then(|t| t.trim_matches('"').parse::<u64>().ok());
            let value: serde_json::Value = serde_json::from_str(&text)?;
            serde_json::json!({ "key": key, "version": version, "value": value }).to_string()
        }
        KvCommand::List { .. } if raw => {
            let page: serde_json::Value = serde_json::from_str(&text)?;
            let keys = page["items"].as_array().cloned().unwrap_or_default();
            keys.iter()
                .filter_map(|i| i["key"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
                .join("\n")
        }
        KvCommand::Delete { key, .. } => {
            serde_json::json!({ "key": key, "deleted": true }).to_string()
        }
        _ => text,
    };
    Ok(Outcome {
        code,
        stdout,
        stderr: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_statuses() {
        assert_eq!(key_path("users/1 é"), "/v1/kv/users%2F1%20%C3%A9");
        assert_eq!(key_path("a-b_c.d~e"), "/v1/kv/a-b_c.d~e");
        for (status, code) in [
            (200, 0),
            (201, 0),
            (204, 0),
            (404, 3),
            (412, 4),
            (409, 4),
            (422, 5),
            (400, 5),
            (401, 6),
            (403, 6),
            (500, 1),
            (503, 1),
        ] {
            assert_eq!(exit_code(status), code, "{status}");
        }
    }
}
