//! Accepting connections: `serve(listener, api, config, shutdown)`, where
//! the caller binds the socket and decides when to stop.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{watch, Semaphore},
    time::Sleep,
};

use crate::Api;

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Time a client has to send a request's headers. Default 10 s.
    pub header_read_timeout: Duration,
    /// Headers per request. Default 64.
    pub max_headers: usize,
    /// Bytes of a request's head (request line and headers); a larger one
    /// is answered `431`. At least 8 KiB. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    /// Default 10,000.
    pub max_connections: usize,
    /// After shutdown is signalled, time for in-flight requests to finish
    /// before their connections are dropped. Default 10 s.
    pub shutdown_grace: Duration,
    /// Time a write to a client may make no progress (the client is not
    /// reading) before its connection is dropped. Default 30 s.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `api` on `listener` (HTTP/1.1 with WebSocket upgrades, and HTTP/2
/// with prior knowledge) until `shutdown` completes; then stops accepting,
/// ends live connections ([`LiveHub::close`](crate::LiveHub::close)), lets
/// in-flight requests finish within [`ServerConfig::shutdown_grace`], and
/// returns.
///
/// Accept errors (such as running out of file descriptors) are logged and
/// retried after a pause; they never end the server.
///
/// # Errors
///
/// None today; the `io::Result` leaves room for listener setup failures.
pub async fn serve<F>(
    listener: TcpListener,
    api: Api,
    config: ServerConfig,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper's timeouts silently do nothing.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));

    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Tells connections still waiting for their first byte to give up, so
    // they do not hold the graceful shutdown until their timeout.
    let (stopping, stop) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    back_off(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, api, watcher) = (builder.clone(), api.clone(), graceful.watcher());
        let mut stop = stop.clone();
        let first_byte_timeout = config.header_read_timeout;
        let write_timeout = config.write_timeout;
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte; a client
            // that connects and sends nothing gets no longer than one that
            // dribbles its headers. (`peek`, not `readable`: the latter can
            // report a fresh socket ready before any byte came.)
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(first_byte_timeout, stream.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
            let io = TokioIo::new(WriteTimeout::new(stream, write_timeout));
            let connection = builder.serve_connection_with_upgrades(io, api);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    if let Some(live) = &api.config().live {
        live.close();
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("connections still open after the shutdown grace period; dropping them");
        }
    }
    Ok(())
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
    tracing::warn!(%error, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection whose writes fail with `TimedOut` once they have made no
/// progress for a while: a client that stops reading (a stalled event
/// stream, a slow-read attack) cannot hold its connection forever. The
/// timer exists only while a write is blocked.
struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes on a write's progress; on no progress, fails once the
    /// timeout has run out since the first blocked attempt.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_timeout() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = WriteTimeout::new(near, Duration::from_secs(30));
        // A reader that takes 16 bytes every 20 s: each stall is shorter
        // than the timeout, so every write gets through.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                far.read_exact(&mut buf).await.unwrap();
            }
            far
        });
        let started = tokio::time::Instant::now();
        io.write_all(&[1; 64]).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(60));
        // Now nobody reads: the next write fails 30 s after it blocked.
        let _far = reader.await.unwrap();
        let blocked = tokio::time::Instant::now();
        let err = io.write_all(&[2; 32]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(blocked.elapsed(), Duration::from_secs(30));
    }
}
