//! What goes into the audit trail from HTTP (every admin route, and every
//! request refused with 401, 403 or 429), and `GET /v1/admin/audit`.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use serde_json::json;

use super::routes::{Op, Resolved};
use crate::app::App;
use crate::audit::Record;
use crate::auth::Caller;
use crate::error::{json_response, ApiError};

type HttpResponse = Response<Full<Bytes>>;

/// What a request leaves for the trail to decide on once it is answered.
pub struct Witness {
    uri: Uri,
    peer: IpAddr,
    caller: Option<Caller>,
}

impl Witness {
    /// Keeps what the trail may need, when there is a trail.
    pub fn of(app: &App, req: &Request<Incoming>, peer: IpAddr) -> Option<Self> {
        app.audit.as_ref()?;
        Some(Self {
            uri: req.uri().clone(),
            peer,
            caller: None,
        })
    }

    /// Notes who the request turned out to be.
    pub fn authenticated(&mut self, caller: &Caller) {
        self.caller = Some(caller.clone());
    }

    /// Records the request if it was an admin action or was refused.
    pub fn answered(self, app: &App, resolved: &Resolved, status: u16, request_id: &str) {
        let Some(audit) = &app.audit else { return };
        let (action, param) = match resolved {
            Resolved::Op(op, param) => {
                (op.name(), self.uri.path().get(param.clone()).unwrap_or(""))
            }
            _ => ("unrouted", ""),
        };
        let admin = matches!(resolved, Resolved::Op(op, _) if is_admin_action(*op));
        let refused = matches!(status, 401 | 403 | 429);
        if !admin && !refused {
            return;
        }
        let who = self.caller.as_ref().map_or("unknown", Caller::name);
        let target = if param.is_empty() {
            self.uri.path()
        } else {
            param
        };
        let record = Record::new(
            who,
            self.peer.to_string(),
            action,
            target,
            status,
            request_id,
        );
        audit.record(record);
    }
}

/// The operations recorded whatever their outcome: every `/v1/admin`
/// route but the header-only backup probe.
fn is_admin_action(op: Op) -> bool {
    op.is_admin() && op != Op::BackupHead
}

/// The most records one page holds.
const MAX_LIMIT: usize = 1000;

/// `GET /v1/admin/audit?after=SEQ&limit=N`: records after `after`, oldest
/// first; `next` is the `after` of the next page (`null` at the end).
pub async fn page(app: &App, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    if app.audit.is_none() {
        return Err(ApiError::NotFound(
            "the audit trail is off (audit.enabled = false)".into(),
        ));
    }
    let (mut after, mut limit) = (0u64, 100usize);
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let bad = |what: &str| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name} must be {what}, got {value:?}"),
            )
        };
        match name.as_ref() {
            "after" => after = value.parse().map_err(|_| bad("a record number"))?,
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad("1..=1000"))?
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}; use after, limit"),
                ))
            }
        }
    }
    let dir = app.settings.audit.dir_for(&app.settings.storage.data_dir);
    let (records, more) =
        tokio::task::spawn_blocking(move || crate::audit::read_page(&dir, after, limit))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(format!("reading the audit trail: {e}")))?;
    let next = records.last().filter(|_| more).map(|r| r.seq);
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": records, "next": next }),
    ))
}
