//! `GET /v1/admin/backup`: streams a backup (see `crate::backup`) while the
//! server keeps serving. The snapshot walk runs on a blocking thread and
//! feeds the response through a small bounded channel, so a slow client
//! holds back the walk instead of the server buffering the whole data set.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Channel};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

use super::{Body, BodyError};
use crate::app::App;

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;

/// `std::io::Write` onto a response body channel, for the blocking walk.
struct ChannelWriter {
    tx: http_body_util::channel::Sender<Bytes, BodyError>,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.runtime
            .block_on(self.tx.send_data(chunk))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "backup client went away")
            })
    }
}

/// The headers of a backup, for HEAD.
pub fn head() -> Response<Body> {
    let mut response = Response::new(http_body_util::Empty::new().map_err(|e| match e {}).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Starts the backup stream.
pub async fn stream(app: &App) -> Response<Body> {
    let (tx, body) = Channel::<Bytes, BodyError>::new(4);
    let storage = Arc::clone(&app.storage);
    let plugins = app.plugins.files();
    let next_id = storage.id_high_water().await;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            runtime,
            buf: Vec::with_capacity(CHUNK),
        };
        match crate::backup::write_backup(&storage, &plugins, next_id, &mut writer) {
            Ok(records) => tracing::info!(records, "backup streamed"),
            Err(e) => {
                tracing::warn!(error = %e, "backup stream stopped");
                // Not a clean end: the client sees the transfer fail (and
                // the trailer is missing, so restore refuses the part).
                writer.tx.abort(e.to_string().into());
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}
