//! Accepting connections: `serve(listener, broker, config, shutdown)`,
//! where the caller binds the socket and decides when to stop.

use std::{future::Future, io, sync::Arc, time::Duration};

use broker_core::Broker;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::JoinSet,
};

use crate::{serve_connection, Error, TcpConfig};

/// Connections over the cap being told so at once; past this many, one is
/// closed without a word.
const REFUSING_AT_ONCE: usize = 64;

/// Serves the TCP protocol for `broker` on `listener` until `shutdown`
/// completes; then stops accepting, tells every connection to end once it
/// has answered the commands it received (idle ones at once, with
/// `ERR shutting_down …`), waits for them up to
/// [`TcpConfig::shutdown_grace`], drops the rest, and returns.
///
/// At most [`TcpConfig::max_connections`] are served at once; one more is
/// accepted, answered `ERR limit_exceeded …` and closed. Accept errors
/// (such as running out of file descriptors) are logged and retried after
/// a pause; they never end the server.
///
/// # Errors
///
/// None today; the `io::Result` leaves room for listener setup failures.
pub async fn serve<F>(
    listener: TcpListener,
    broker: Broker,
    config: TcpConfig,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let (stopping, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ended) = connections.join_next() => {
                if let Err(e) = ended {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a TCP connection panicked");
                    }
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    back_off(&e).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let refusal = Error::Broker(broker_core::Error::LimitExceeded {
                what: "TCP connections",
                limit: config.max_connections,
            });
            let answer = format!("ERR {} {refusal}\r\n", refusal.code());
            match refusing.clone().try_acquire_owned() {
                Ok(permit) => {
                    connections.spawn(async move {
                        refuse(stream, answer.as_bytes()).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let _ = stream.try_write(answer.as_bytes());
                }
            }
            continue;
        };
        let (broker, config, mut stop) = (broker.clone(), config.clone(), stop.clone());
        connections.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|stopping| *stopping).await;
            };
            if let Err(error) = serve_connection(stream, &broker, &config, stopped).await {
                tracing::debug!(%error, code = error.code(), "TCP connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "TCP connections still open after the shutdown grace period; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Tells a connection over the cap why it is closed, within a second:
/// the answer, then the end of our side, then whatever the client had
/// sent is read and dropped (closing with unread input would reset the
/// connection, and the answer with it).
async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Pauses after an accept error: not at all for errors of one connection,
/// a moment for resource exhaustion (EMFILE, ENFILE, ENOBUFS).
async fn back_off(error: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(%error, "TCP accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
