//! The route table: every path the server answers and what each method does
//! there. The router dispatches through it, `405` answers take their
//! `Allow` from it, the `route` metric label comes from it, and tests hold
//! it equal to `docs/openapi.yaml` (here) and to the live server (in
//! `tests/tests/openapi.rs`), so the three cannot drift apart.

use std::ops::Range;

use hyper::Method;

/// One operation: what a method on a path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /v1/kv`: a page of keys.
    KvList,
    /// `POST /v1/kv`: a value under a new key.
    KvCreate,
    /// `GET /v1/kv/{key}`.
    KvGet,
    /// `PUT /v1/kv/{key}`.
    KvPut,
    /// `DELETE /v1/kv/{key}`.
    KvDelete,
    /// `PATCH /v1/kv/{key}`: a merge patch or JSON patch.
    KvPatch,
    /// `POST /v1/kv/{key}?op=incr`: an increment.
    KvIncr,
    /// `POST /v1/kv/get`: many keys at one revision.
    KvGetMany,
    /// `POST /v1/txn`: a transaction.
    Txn,
    /// `GET /v1/watch`: the change feed as Server-Sent Events.
    Watch,
    /// `GET /v1/changes`: the change feed as a long poll.
    Changes,
    /// `GET /api`: an ExDaas record.
    ApiRead,
    /// `POST /api`: an ExDaas create or update.
    ApiWrite,
    /// `GET /api/cmd`: an ExDaas command.
    ApiCmd,
    /// `GET /v1/plugins`.
    PluginList,
    /// `POST /v1/plugins/dry-run/{key}`.
    PluginDryRun,
    /// `POST /v1/admin/plugins/reload`.
    PluginReload,
    /// `GET /v1/plugins/{name}/shadow`: a shadow plugin's record.
    PluginShadow,
    /// `POST /v1/admin/plugins/{name}/promote`: shadow to enforce.
    PluginPromote,
    /// `PUT /v1/admin/plugins/{name}`: upload a managed plugin version.
    PluginUpload,
    /// `GET /v1/admin/plugins/{name}`: a plugin's versions and stats.
    PluginDescribe,
    /// `DELETE /v1/admin/plugins/{name}`: remove a managed plugin.
    PluginDelete,
    /// `POST /v1/admin/plugins/{name}/rollback`: an earlier version again.
    PluginRollback,
    /// `POST /v1/admin/promote`: a replica becomes a primary.
    Promote,
    /// `POST /v1/admin/auth/reload`: read the tokens again.
    AuthReload,
    /// `GET /v1/admin/audit`: a page of the audit trail.
    Audit,
    /// `GET /v1/admin/backup`: the streamed backup.
    Backup,
    /// `HEAD /v1/admin/backup`: its headers without taking one.
    BackupHead,
    /// `GET /health`.
    Health,
    /// `GET /ready`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/openapi.json`.
    OpenApi,
}

impl Op {
    /// Whether it is served under `/v1/admin` (checked against the route
    /// table by a test).
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            Op::PluginReload
                | Op::PluginPromote
                | Op::PluginUpload
                | Op::PluginDescribe
                | Op::PluginDelete
                | Op::PluginRollback
                | Op::Promote
                | Op::AuthReload
                | Op::Audit
                | Op::Backup
                | Op::BackupHead
        )
    }

    /// Its name in the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Op::KvList => "kv_list",
            Op::KvCreate => "kv_create",
            Op::KvGet => "kv_get",
            Op::KvPut => "kv_put",
            Op::KvDelete => "kv_delete",
            Op::KvPatch => "kv_patch",
            Op::KvIncr => "kv_incr",
            Op::KvGetMany => "kv_get_many",
            Op::Txn => "txn",
            Op::Watch => "watch",
            Op::Changes => "changes",
            Op::ApiRead => "api_read",
            Op::ApiWrite => "api_write",
            Op::ApiCmd => "api_cmd",
            Op::PluginList => "plugin_list",
            Op::PluginDryRun => "plugin_dry_run",
            Op::PluginReload => "plugin_reload",
            Op::PluginShadow => "plugin_shadow",
            Op::PluginPromote => "plugin_promote",
            Op::PluginUpload => "plugin_upload",
            Op::PluginDescribe => "plugin_describe",
            Op::PluginDelete => "plugin_delete",
            Op::PluginRollback => "plugin_rollback",
            Op::Promote => "promote",
            Op::AuthReload => "auth_reload",
            Op::Audit => "audit_read",
            Op::Backup => "backup",
            Op::BackupHead => "backup_head",
            Op::Health => "health",
            Op::Ready => "ready",
            Op::Metrics => "metrics",
            Op::OpenApi => "openapi",
        }
    }
}

/// A path and its operations. A template ending in `{key}` matches any
/// non-empty rest of the path (keys may contain `/`); `{name}` matches one
/// non-empty path segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// The path as the OpenAPI document writes it.
    pub template: &'static str,
    /// Each allowed method and its operation. `HEAD` answers as `GET`
    /// without the body unless it has an operation of its own.
    pub ops: &'static [(Method, Op)],
}

/// The trailing parameter of templated paths.
const KEY_PARAM: &str = "{key}";
/// A one-segment parameter.
const NAME_PARAM: &str = "{name}";

const fn get(op: Op) -> [(Method, Op); 2] {
    [(Method::GET, op), (Method::HEAD, op)]
}

/// Every route, in the order the README's table lists them.
pub static ROUTES: &[Route] = &[
    Route {
        template: "/v1/kv",
        ops: &[
            (Method::GET, Op::KvList),
            (Method::HEAD, Op::KvList),
            (Method::POST, Op::KvCreate),
        ],
    },
    // Before `/v1/kv/{key}`, which still serves every other method on the
    // key "get" (see `resolve`).
    Route {
        template: "/v1/kv/get",
        ops: &[(Method::POST, Op::KvGetMany)],
    },
    Route {
        template: "/v1/kv/{key}",
        ops: &[
            (Method::GET, Op::KvGet),
            (Method::HEAD, Op::KvGet),
            (Method::PUT, Op::KvPut),
            (Method::PATCH, Op::KvPatch),
            (Method::POST, Op::KvIncr),
            (Method::DELETE, Op::KvDelete),
        ],
    },
    Route {
        template: "/v1/txn",
        ops: &[(Method::POST, Op::Txn)],
    },
    Route {
        template: "/v1/watch",
        ops: &[(Method::GET, Op::Watch)],
    },
    Route {
        template: "/v1/changes",
        ops: &[(Method::GET, Op::Changes)],
    },
    Route {
        template: "/api",
        ops: &[
            (Method::GET, Op::ApiRead),
            (Method::HEAD, Op::ApiRead),
            (Method::POST, Op::ApiWrite),
        ],
    },
    Route {
        template: "/api/cmd",
        ops: &get(Op::ApiCmd),
    },
    Route {
        template: "/v1/plugins",
        ops: &get(Op::PluginList),
    },
    Route {
        template: "/v1/plugins/dry-run/{key}",
        ops: &[(Method::POST, Op::PluginDryRun)],
    },
    Route {
        template: "/v1/admin/plugins/reload",
        ops: &[(Method::POST, Op::PluginReload)],
    },
    Route {
        template: "/v1/plugins/{name}/shadow",
        ops: &get(Op::PluginShadow),
    },
    Route {
        template: "/v1/admin/plugins/{name}/promote",
        ops: &[(Method::POST, Op::PluginPromote)],
    },
    Route {
        template: "/v1/admin/plugins/{name}",
        ops: &[
            (Method::GET, Op::PluginDescribe),
            (Method::HEAD, Op::PluginDescribe),
            (Method::PUT, Op::PluginUpload),
            (Method::DELETE, Op::PluginDelete),
        ],
    },
    Route {
        template: "/v1/admin/plugins/{name}/rollback",
        ops: &[(Method::POST, Op::PluginRollback)],
    },
    Route {
        template: "/v1/admin/promote",
        ops: &[(Method::POST, Op::Promote)],
    },
    Route {
        template: "/v1/admin/auth/reload",
        ops: &[(Method::POST, Op::AuthReload)],
    },
    Route {
        template: "/v1/admin/audit",
        ops: &[(Method::GET, Op::Audit)],
    },
    Route {
        template: "/v1/admin/backup",
        ops: &[(Method::GET, Op::Backup), (Method::HEAD, Op::BackupHead)],
    },
    Route {
        template: "/health",
        ops: &get(Op::Health),
    },
    Route {
        template: "/ready",
        ops: &get(Op::Ready),
    },
    Route {
        template: "/metrics",
        ops: &get(Op::Metrics),
    },
    Route {
        template: "/v1/openapi.json",
        ops: &get(Op::OpenApi),
    },
];

/// How a request's path and method resolve.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An operation, with where the path's `{key}` or `{name}` part lies
    /// (still percent-encoded; empty for paths without one).
    Op(Op, Range<usize>),
    /// The path exists but not with this method.
    MethodNotAllowed(&'static Route),
    /// No such path.
    NotFound,
}

impl Route {
    /// Where the path's `{key}` or `{name}` part lies if this route
    /// matches `path` (an empty range at the end for routes without one).
    fn matches(&self, path: &str) -> Option<Range<usize>> {
        if let Some(prefix) = self.template.strip_suffix(KEY_PARAM) {
            let rest = path.strip_prefix(prefix).filter(|rest| !rest.is_empty())?;
            return Some(path.len() - rest.len()..path.len());
        }
        if let Some((before, after)) = self.template.split_once(NAME_PARAM) {
            let name = path.strip_prefix(before)?.strip_suffix(after)?;
            let ok = !name.is_empty() && !name.contains('/');
            return ok.then_some(before.len()..before.len() + name.len());
        }
        (path == self.template).then_some(path.len()..path.len())
    }

    /// The `Allow` header value: the route's methods, in table order.
    pub fn allow(&self) -> String {
        let names: Vec<&str> = self.ops.iter().map(|(m, _)| m.as_str()).collect();
        names.join(", ")
    }
}

/// Finds what `method` on `path` does. `/v1/kv/` (trailing slash) is the
/// collection, as clients of the first version used it. A fixed path that
/// is also a key (`/v1/kv/get`) answers its own methods; the key's route
/// answers the rest.
pub fn resolve(method: &Method, path: &str) -> Resolved {
    let path = if path == "/v1/kv/" { "/v1/kv" } else { path };
    for (i, route) in ROUTES.iter().enumerate() {
        let Some(param) = route.matches(path) else {
            continue;
        };
        if let Some((_, op)) = route.ops.iter().find(|(m, _)| m == method) {
            return Resolved::Op(*op, param);
        }
        let also_a_key = ROUTES[i + 1..]
            .iter()
            .any(|r| r.template.ends_with(KEY_PARAM) && r.matches(path).is_some());
        if !also_a_key {
            return Resolved::MethodNotAllowed(route);
        }
    }
    Resolved::NotFound
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;

    fn spec() -> serde_json::Value {
        super::super::openapi::document_value().unwrap()
    }

    /// The operation and parameter text `path` resolves to.
    fn op<'p>(method: &Method, path: &'p str) -> Option<(Op, &'p str)> {
        match resolve(method, path) {
            Resolved::Op(op, range) => Some((op, &path[range])),
            _ => None,
        }
    }

    #[test]
    fn resolves_paths_methods_and_keys() {
        assert_eq!(op(&Method::PUT, "/v1/kv/a/b"), Some((Op::KvPut, "a/b")));
        assert_eq!(op(&Method::POST, "/v1/kv/"), Some((Op::KvCreate, "")));
        assert_eq!(resolve(&Method::GET, "/v1/kvx"), Resolved::NotFound);
        assert_eq!(
            resolve(&Method::GET, "/v1/plugins/dry-run/"),
            Resolved::NotFound
        );
        assert_eq!(
            op(&Method::GET, "/v1/plugins/schema/shadow"),
            Some((Op::PluginShadow, "schema"))
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/plugins/a/b/shadow"),
            Resolved::NotFound
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/plugins//shadow"),
            Resolved::NotFound
        );
        assert_eq!(
            op(&Method::POST, "/v1/admin/plugins/schema/promote"),
            Some((Op::PluginPromote, "schema"))
        );
        assert_eq!(
            op(&Method::HEAD, "/v1/admin/backup"),
            Some((Op::BackupHead, ""))
        );
        let Resolved::MethodNotAllowed(route) = resolve(&Method::OPTIONS, "/v1/kv/x") else {
            panic!("OPTIONS on a key must be 405");
        };
        assert_eq!(route.allow(), "GET, HEAD, PUT, PATCH, POST, DELETE");
        // The key "get" is a key like any other, but for POST.
        assert_eq!(op(&Method::POST, "/v1/kv/get"), Some((Op::KvGetMany, "")));
        assert_eq!(op(&Method::GET, "/v1/kv/get"), Some((Op::KvGet, "get")));
        assert_eq!(op(&Method::POST, "/v1/kv/gets"), Some((Op::KvIncr, "gets")));
        let Resolved::MethodNotAllowed(route) = resolve(&Method::OPTIONS, "/v1/kv/get") else {
            panic!("OPTIONS on the key get must be 405");
        };
        assert_eq!(route.template, "/v1/kv/{key}");
        // A plugin named "reload" could never shadow the reload route.
        assert_eq!(
            op(&Method::POST, "/v1/admin/plugins/reload"),
            Some((Op::PluginReload, ""))
        );
        assert!(matches!(
            resolve(&Method::PUT, "/v1/admin/plugins/reload"),
            Resolved::MethodNotAllowed(_)
        ));
        assert_eq!(
            op(&Method::PUT, "/v1/admin/plugins/enum-field"),
            Some((Op::PluginUpload, "enum-field"))
        );
        assert_eq!(
            op(&Method::POST, "/v1/admin/plugins/enum-field/rollback"),
            Some((Op::PluginRollback, "enum-field"))
        );
        assert_eq!(
            resolve(&Method::PUT, "/v1/admin/plugins/a/b"),
            Resolved::NotFound
        );
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_back() {
        let spec = spec();
        let paths = spec["paths"].as_object().unwrap();
        let ours: BTreeSet<&str> = ROUTES.iter().map(|r| r.template).collect();
        let theirs: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
        assert_eq!(ours, theirs, "router paths vs docs/openapi.yaml paths");
        for route in ROUTES {
            let ours: BTreeSet<String> = route
                .ops
                .iter()
                .map(|(m, _)| m.as_str().to_lowercase())
                .collect();
            let theirs: BTreeSet<String> = paths[route.template]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .cloned()
                .collect();
            assert_eq!(ours, theirs, "methods of {}", route.template);
        }
    }

    #[test]
    fn admin_operations_are_the_admin_routes() {
        for route in ROUTES {
            for (_, op) in route.ops {
                assert_eq!(
                    op.is_admin(),
                    route.template.starts_with("/v1/admin/"),
                    "{op:?} at {}",
                    route.template
                );
            }
        }
    }

    #[test]
    fn the_readme_lists_every_route() {
        let readme = include_str!("../../../README.md");
        for route in ROUTES {
            assert!(
                readme.contains(route.template),
                "README.md does not mention {}",
                route.template
            );
        }
    }
}
