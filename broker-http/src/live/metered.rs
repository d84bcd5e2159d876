//! What a WebSocket connection has read of its client's message, counted
//! in the broker's memory budget (`--max-memory-bytes`) until the message
//! is whole and answered.
//!
//! tungstenite gathers a client message (up to [`LiveConfig::max_frame_bytes`])
//! before handing it over, so a client that sends most of a large message
//! and stops holds that much. [`Metered`] sits under tungstenite and counts
//! every byte read from the socket as held (not evictable, like deliveries
//! in flight); the session [`settle`](Meter::settle)s the count once it has
//! answered a message. A read that finds the budget full fails, and the
//! session closes the connection (`1013 Try Again Later`): what clients
//! hold in half-sent messages can never pass the limit by more than a read
//! each.
//!
//! The count is close, not exact: bytes of the next message that came in
//! the same read as the end of one are released with it (at most one read
//! buffer, 4 KiB).
//!
//! [`LiveConfig::max_frame_bytes`]: super::LiveConfig::max_frame_bytes

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::Arc,
    task::{ready, Context, Poll},
};

use broker_core::MemoryBudget;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's count of bytes read and not yet settled.
#[derive(Debug)]
pub(crate) struct Meter {
    budget: MemoryBudget,
    held: AtomicUsize,
    /// A read found the budget full.
    full: AtomicBool,
}

impl Meter {
    pub(crate) fn new(budget: MemoryBudget) -> Arc<Self> {
        Arc::new(Meter {
            budget,
            held: AtomicUsize::new(0),
            full: AtomicBool::new(false),
        })
    }

    /// The message read so far is answered: it no longer counts.
    pub(crate) fn settle(&self) {
        let held = self.held.swap(0, Ordering::AcqRel);
        self.budget.release(held);
    }

    /// Whether the connection's read failed because the budget was full.
    pub(crate) fn was_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Bytes counted now (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn read(&self, bytes: usize) -> io::Result<()> {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.budget.add(bytes);
        if self.budget.is_full() {
            self.full.store(true, Ordering::Release);
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the broker's memory budget is full",
            ));
        }
        Ok(())
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.settle();
    }
}

/// An I/O stream whose reads are counted by a [`Meter`].
#[derive(Debug)]
pub(crate) struct Metered<S> {
    io: S,
    meter: Arc<Meter>,
}

impl<S> Metered<S> {
    pub(crate) fn new(io: S, meter: Arc<Meter>) -> Self {
        Metered { io, meter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        Poll::Ready(this.meter.read(buf.filled().len() - before))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn reads_count_until_settled_and_fail_once_the_budget_is_full() {
        let budget = MemoryBudget::new(10_000);
        let meter = Meter::new(budget.clone());
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut server = Metered::new(server, meter.clone());
        let mut buf = vec![0; 64 * 1024];

        client.write_all(&[1; 6_000]).await.unwrap();
        let mut got = 0;
        while got < 6_000 {
            got += server.read(&mut buf).await.unwrap();
        }
        assert_eq!((meter.held(), budget.used()), (6_000, 6_000));
        meter.settle();
        assert_eq!((meter.held(), budget.used()), (0, 0));

        // Something else holds most of the budget: the next read fails.
        let _other = budget.charge(9_000);
        client.write_all(&[1; 2_000]).await.unwrap();
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::OutOfMemory);
        assert!(meter.was_full());
        drop(server);
        drop(meter);
        assert_eq!(budget.used(), 9_000, "what it held goes with it");
    }
}
