//! The process lifecycle: open storage, bind, serve, and on SIGTERM/SIGINT
//! shut down in order: stop accepting, finish in-flight requests (bounded),
//! drain every writer, close the stores.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::LoadedSettings;
use crate::storage::Storage;

/// Runs the server until a termination signal, then shuts down cleanly.
pub async fn run(loaded: LoadedSettings) -> anyhow::Result<()> {
    let settings = loaded.settings.clone();
    let addr = loaded.listen_addr()?;
    let storage_settings = settings.storage.clone();
    let cache_settings = settings.cache.clone();
    let storage =
        tokio::task::spawn_blocking(move || Storage::open(&storage_settings, &cache_settings))
            .await??;
    let storage = Arc::new(storage);
    if settings.cache.warm_on_start {
        storage.start_warming();
    }
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (server.listen, from {}): {e}",
            loaded.origin("server.listen")
        )
    })?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %settings.storage.data_dir.display(),
        shards = settings.storage.shards,
        "exdaas started"
    );
    let app = Arc::new(App {
        settings: settings.clone(),
        storage: storage.clone(),
    });
    crate::http::serve(
        listener,
        app,
        termination(),
        Duration::from_millis(settings.server.shutdown_timeout_ms),
    )
    .await;
    tokio::task::spawn_blocking(move || storage.close()).await?;
    tracing::info!("exdaas stopped; all writes drained and stores closed");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
