//! Who a request is and whether it may do what it asks: the caller comes
//! from its bearer token or client certificate, and each operation names
//! what it needs. Operations over many keys (listings, multi-get,
//! transactions, the change feed, `/api`) check their keys themselves,
//! with the caller they are handed.

use hyper::body::Incoming;
use hyper::Request;

use super::routes::Op;
use crate::app::App;
use crate::auth::scope::Level;
use crate::auth::{Caller, Denied, Peer, Role};
use crate::error::ApiError;

/// The caller of `req`, or why it has none (401, or 403 in protected mode).
pub fn authenticate(app: &App, req: &Request<Incoming>, peer: &Peer) -> Result<Caller, ApiError> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let now = crate::storage::now_ms();
    app.tokens
        .current()
        .authenticate(header, peer, now)
        .map_err(|denied| match denied {
            Denied::LoopbackOnly => ApiError::Forbidden(
                "this server has no auth.tokens configured, so it only serves clients on its \
                 own machine; configure auth.tokens (or auth.tokens_file) and send \
                 Authorization: Bearer <token>, or set auth.allow_open_remote = true to serve \
                 everyone without authentication"
                    .into(),
            ),
            Denied::Unauthenticated => ApiError::Unauthorized(
                "missing or unknown bearer token (send Authorization: Bearer <token>)".into(),
            ),
            Denied::Expired { name } => {
                ApiError::Unauthorized(format!("token {} has expired", crate::ijson::quote(&name)))
            }
        })
}

/// Refuses `caller` the key `key` unless it may `need` it.
pub fn need_key(caller: &Caller, key: &str, need: Level) -> Result<(), ApiError> {
    if caller.may(key, need) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "token {} may not {} key {}",
        crate::ijson::quote(caller.name()),
        need.as_str(),
        crate::error::capped(&crate::ijson::quote(key))
    )))
}

fn need_role(caller: &Caller, role: Role, what: &str) -> Result<(), ApiError> {
    if caller.has_role(role) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "token {} may not {what}: that needs the {} role",
        crate::ijson::quote(caller.name()),
        role.as_str()
    )))
}

fn need_plugin(caller: &Caller, name: &str) -> Result<(), ApiError> {
    if caller.may_manage_plugin(name) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "token {} may not manage plugin {}: that needs the admin role or a plugins pattern naming it",
        crate::ijson::quote(caller.name()),
        crate::ijson::quote(name)
    )))
}

/// Whether `caller` may run `op` on `param` (its key or plugin name), as
/// far as the operation's path tells; the many-key operations check the
/// rest themselves.
pub fn permit(caller: &Caller, op: Op, param: &str, query: Option<&str>) -> Result<(), ApiError> {
    match op {
        Op::KvGet => need_key(caller, param, Level::Read),
        Op::KvPut | Op::KvDelete | Op::KvPatch | Op::KvIncr | Op::PluginDryRun => {
            need_key(caller, param, Level::Write)
        }
        // With a query this is an increment of the key "get".
        Op::KvGetMany if query.is_some_and(|q| !q.is_empty()) => {
            need_key(caller, "get", Level::Write)
        }
        Op::KvCreate if !caller.may_create() => Err(ApiError::Forbidden(format!(
            "token {} may not store under server-assigned keys (decimal numbers): that needs write access to every key starting with a digit",
            crate::ijson::quote(caller.name())
        ))),
        Op::PluginUpload
        | Op::PluginDescribe
        | Op::PluginDelete
        | Op::PluginRollback
        | Op::PluginPromote => need_plugin(caller, param),
        Op::PluginShadow if caller.has_role(Role::Read) => Ok(()),
        Op::PluginShadow => need_plugin(caller, param),
        Op::PluginReload => need_role(caller, Role::Admin, "reload plugins"),
        Op::Promote => need_role(caller, Role::Admin, "promote a replica"),
        Op::Backup | Op::BackupHead => need_role(caller, Role::Admin, "take backups"),
        Op::AuthReload => need_role(caller, Role::Admin, "reload tokens"),
        Op::Audit => need_role(caller, Role::Admin, "read the audit trail"),
        Op::KvCreate
        | Op::KvList
        | Op::KvGetMany
        | Op::Txn
        | Op::Watch
        | Op::Changes
        | Op::ApiRead
        | Op::ApiWrite
        | Op::ApiCmd
        | Op::PluginList
        | Op::Health
        | Op::Ready
        | Op::Metrics
        | Op::OpenApi => Ok(()),
    }
}
