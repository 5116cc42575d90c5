//! The process lifecycle: open storage, bind, serve, and on SIGTERM/SIGINT
//! shut down in order: stop accepting, finish in-flight requests (bounded),
//! drain every writer, close the stores.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::LoadedSettings;
use crate::plugin_host::PluginHost;
use crate::storage::Storage;

/// Reloads the plugin chain, the tokens and the TLS certificate on every
/// SIGHUP; each that fails keeps what it had. The handler is installed
/// before this returns (see `termination`).
fn reload_on_sighup(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload plugins over HTTP instead");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading plugins and tokens");
                let plugins = app.reload_plugins().await;
                if let Err(e) = &plugins {
                    tracing::error!(error = %e, "plugin reload failed; previous chain stays active");
                }
                app.audit_signal("plugin_reload", plugins.is_ok());
                // Logged either way inside.
                let tokens = app.reload_tokens("SIGHUP");
                app.audit_signal("auth_reload", tokens.is_ok());
                app.reload_tls("SIGHUP");
            }
        });
    }
}

/// A listening socket on `addr` with a queue of `backlog` connections.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs the server until a termination signal, then shuts down cleanly.
pub async fn run(loaded: LoadedSettings) -> anyhow::Result<()> {
    let settings = loaded.settings.clone();
    if !crate::memory::return_large_blocks_at_once() {
        tracing::info!("the allocator's large-block threshold is not adjustable here");
    }
    let files = crate::descriptors::raise_open_files_limit();
    let max_connections = crate::descriptors::connection_cap(
        settings.server.max_connections,
        files.soft,
        settings.storage.shards,
    );
    tracing::info!(
        soft_before = files.before,
        soft = files.soft,
        hard = files.hard,
        max_connections,
        "open-files limit"
    );
    if max_connections < settings.server.max_connections {
        tracing::warn!(
            configured = settings.server.max_connections,
            max_connections,
            "server.max_connections lowered to leave the storage descriptors under the open-files limit"
        );
    }
    let addr = loaded.listen_addr()?;
    let storage_settings = settings.storage.clone();
    let cache_settings = settings.cache.clone();
    let primary = settings.replication.primary_addr().map(str::to_owned);
    if let Some(primary) = &primary {
        crate::replication::bootstrap(&settings, primary).await?;
    }
    let feed_options = crate::storage::FeedOptions::of(&settings.feed);
    let storage = tokio::task::spawn_blocking(move || {
        Storage::open_with_feed(&storage_settings, &cache_settings, feed_options)
    })
    .await??;
    let storage = Arc::new(storage);
    let (plugin_settings, config_file) = (settings.clone(), loaded.file.clone());
    let plugins =
        tokio::task::spawn_blocking(move || PluginHost::open(&plugin_settings, config_file))
            .await??;
    // One per CPU: plugin calls are CPU work, and more threads than cores
    // only add switches between them (a PUT through one validator ran at
    // 0.85 of a plain PUT with twice as many, 0.90 with one per CPU).
    let threads = match settings.server.plugin_threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let workers = crate::plugin::WorkerPool::new(threads)?;
    let tokens = crate::auth::Tokens::load(&settings.auth).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut app = App::new(settings.clone(), storage.clone(), plugins, workers, tokens);
    if settings.tls.enabled() {
        app.tls = Some(crate::tls::Tls::load(&settings.tls)?);
    }
    if settings.audit.enabled {
        let dir = settings.audit.dir_for(&settings.storage.data_dir);
        let audit = crate::audit::Audit::open(&dir, &settings.audit)
            .map_err(|e| anyhow::anyhow!("audit.dir {}: {e}", dir.display()))?;
        app.audit = Some(audit);
    }
    if let Some(primary) = &primary {
        let applied = storage.feed().head();
        let replica = Arc::new(crate::replication::Replica::new(
            &settings.replication,
            &settings.limits,
            primary,
            applied,
        ));
        storage.set_read_only(Some(settings.replication.primary.clone()));
        replica.start(storage.clone());
        tracing::info!(primary = %settings.replication.primary, revision = applied, "running as a read replica");
        app.replica = Some(replica);
    }
    let app = Arc::new(app);
    let replica = app.replica.clone();
    if app.tokens.current().enabled() {
        tracing::info!(
            tokens = app.tokens.current().len(),
            "access control on: bearer tokens required"
        );
    } else if settings.auth.allow_open_remote {
        tracing::warn!(
            "no auth.tokens configured and auth.allow_open_remote is on: every client that can reach this server may read, write, back up and reload plugins"
        );
    } else {
        tracing::warn!(
            "no auth.tokens configured: only clients on this machine are served; others get 403 until tokens are configured"
        );
    }
    let listener = listen(addr, settings.server.listen_backlog).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (server.listen, from {}): {e}",
            loaded.origin("server.listen")
        )
    })?;
    if settings.cache.warm_on_start {
        storage.start_warming();
    }
    // A replica's expiries come from its primary.
    if primary.is_none() {
        storage.start_sweeper();
    }
    reload_on_sighup(app.clone());
    let term = termination();
    let feed = Arc::clone(storage.feed());
    // Streams of the change feed never end by themselves: end them when
    // the server stops, so the drain does not wait them out.
    let stop = async move {
        term.await;
        feed.close();
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %settings.storage.data_dir.display(),
        shards = settings.storage.shards,
        tls = settings.tls.enabled(),
        mutual_tls = settings.tls.client_ca_file.is_some(),
        "exdaas started"
    );
    let app_for_close = Arc::clone(&app);
    crate::http::serve(
        listener,
        app,
        max_connections,
        stop,
        Duration::from_millis(settings.server.shutdown_timeout_ms),
    )
    .await;
    // The follower writes into the stores: it stops before they close.
    if let Some(replica) = replica {
        replica.stop();
    }
    if let Some(audit) = &app_for_close.audit {
        audit.close();
    }
    tokio::task::spawn_blocking(move || storage.close()).await?;
    tracing::info!("exdaas stopped; all writes drained and stores closed");
    Ok(())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: the server announces that it
/// has started before it serves, and a SIGTERM in between must still mean a
/// clean stop rather than the default (immediate) death.
fn termination() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
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
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
