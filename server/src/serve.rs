//! Running the API on a socket, with TLS or (loopback only) without.

use std::net::SocketAddr;

use axum_server::tls_rustls::RustlsConfig;

use crate::error::{Error, Result};
use crate::state::State;

/// Serves until `shutdown` completes, then drains open requests.
pub async fn run(
    core: State,
    listener: std::net::TcpListener,
    tls: Option<RustlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = crate::http::app(core).into_make_service_with_connect_info::<SocketAddr>();
    listener.set_nonblocking(true)?;
    match tls {
        Some(cfg) => {
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            // TCP_NODELAY: small TLS handshake records otherwise wait on
            // delayed ACKs (tens of ms added to a fresh connection).
            axum_server::from_tcp_rustls(listener, cfg)
                .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
                .handle(handle)
                .serve(app)
                .await
                .map_err(Error::Io)
        }
        None => {
            use axum::serve::ListenerExt;
            let l = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(l, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(Error::Io)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
